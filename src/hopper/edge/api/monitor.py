"""``/v1/monitor``: the live classroom monitor for API-token callers (teachers).

A snapshot of a class's tablets with a cursor; the changes after a cursor (polling, with a
suggested back-off); or a server-sent-event stream of them. A teacher's token reads only
the classes they teach, on all three alike (403 otherwise).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from hopper.access import Scope
from hopper.edge.api.access import Caller, audience, refuse
from hopper.edge.monitor import MonitorBoard, parse_cursor, sse_response
from hopper.edge.monitor.sse import MEDIA_TYPE

router = APIRouter(prefix="/monitor", tags=["monitor"])

AUDIENCES = (Scope.TEACHERS,)
CallerDep = Annotated[Caller, Depends(audience(*AUDIENCES))]
ClassId = Annotated[str, Path(min_length=1, max_length=200)]
Cursor = Annotated[str | None, Query(max_length=19, pattern=r"^[0-9]+$")]


def _board(request: Request) -> MonitorBoard:
    api = request.app.state.api
    board: MonitorBoard | None = api.monitor
    if board is None:
        raise HTTPException(status_code=404, detail=api.monitor_off)
    return board


def _unknown(class_id: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"no class {class_id!r}")


@router.get("/classes/{class_id}", summary="A class's tablets now, with a cursor")
def class_snapshot(request: Request, caller: CallerDep, class_id: ClassId) -> dict[str, Any]:
    """Each tablet of the class (student, app, book, page of N, battery, state, last seen)."""
    board = _board(request)
    if not caller.may_read_class(class_id):
        raise refuse(f"class {class_id!r}")
    snapshot = board.snapshot(class_id)
    if snapshot is None:
        raise _unknown(class_id)
    return snapshot.as_dict()


@router.get("/classes/{class_id}/changes", summary="What changed after a cursor (polling)")
def class_changes(
    request: Request,
    response: Response,
    caller: CallerDep,
    class_id: ClassId,
    after: Cursor = None,
) -> Any:
    """Each tablet changed after ``after``; a new snapshot (``reset``) when it is too old.

    ``retry_after_ms`` (and ``Retry-After``) says when to poll again: longer when many
    clients poll. ``If-None-Match`` with the answer's ``ETag`` gets 304 when nothing changed.
    """
    board = _board(request)
    if not caller.may_read_class(class_id):
        raise refuse(f"class {class_id!r}")
    changes = board.changes_after(class_id, parse_cursor(after))
    if changes is None:
        raise _unknown(class_id)
    retry_ms = board.poll_retry_after_ms(caller.principal.token_id)
    headers = {
        "Retry-After": str(max(1, math.ceil(retry_ms / 1000))),
        "ETag": f'"{changes.cursor}"',
    }
    if (
        changes.snapshot is None
        and not changes.changes
        and request.headers.get("if-none-match") == headers["ETag"]
    ):
        return Response(status_code=304, headers=headers)
    response.headers.update(headers)
    return {**changes.as_dict(), "retry_after_ms": retry_ms}


@router.get(
    "/classes/{class_id}/events",
    summary="The class's tablets as server-sent events",
    response_class=Response,
    responses={200: {"content": {MEDIA_TYPE: {}}, "description": "an SSE stream"}},
)
async def class_events(
    request: Request, caller: CallerDep, class_id: ClassId, after: Cursor = None
) -> Response:
    """``event: snapshot``, then ``event: device`` with changed fields; resumes by cursor.

    A reconnecting client sends ``Last-Event-ID`` (browsers do) or ``?after=CURSOR``.
    """
    board = _board(request)
    if not await run_in_threadpool(caller.may_read_class, class_id):
        raise refuse(f"class {class_id!r}")
    if not board.has_class(class_id):
        raise _unknown(class_id)
    return sse_response(board, class_id, request.headers.get("last-event-id") or after)
