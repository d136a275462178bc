"""Server-sent events for the live monitor: one stream per page, resumable by cursor.

A stream is ``text/event-stream``::

    retry: 3000

    id: 1790000000000123
    event: snapshot
    data: {"class_id": "5a", "cursor": "1790000000000123", "devices": [...], ...}

    event: device
    data: {"device_id": "tab-7", "page": 12, "last_seen_ms": 1790000004000}

    id: 1790000000000131
    event: device
    data: {"device_id": "tab-9", "removed": true}

    : heartbeat

Each batch of changes carries the cursor of its newest change as the ``id`` of its last
event, so a browser that reconnects sends it back as ``Last-Event-ID`` and gets only what
changed since (or a new snapshot when that cursor has left the log). A comment line goes
out every ``monitor.sse_heartbeat_secs`` on a quiet stream, so proxies keep it open and a
gone client is noticed.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence

import orjson
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from hopper.edge.monitor.board import (
    ClassSnapshot,
    Message,
    MonitorBoard,
    MonitorBusyError,
    Subscription,
)

MEDIA_TYPE = "text/event-stream"
_CURSOR = re.compile(r"^[0-9]{1,19}$")
HEARTBEAT = b": heartbeat\n\n"


def parse_cursor(value: str | None) -> int | None:
    """Return the cursor a client sent back (``Last-Event-ID``, ``?after=``); None if not one."""
    if value is None or not _CURSOR.match(value.strip()):
        return None
    return int(value.strip())


def render_messages(board: MonitorBoard, messages: Sequence[Message]) -> bytes:
    """Render snapshots and changes as SSE events; the last one carries the newest cursor."""
    parts: list[bytes] = []
    newest = 0
    now_ms = board.clock.now_ms()
    delivery = board.delivery_seconds
    for message in messages:
        if isinstance(message, ClassSnapshot):
            newest = max(newest, message.cursor)
            parts.append(b"event: snapshot\ndata: " + orjson.dumps(message.as_dict()) + b"\n")
        else:
            newest = max(newest, message.seq)
            if message.received_ms is not None:
                delivery.observe(max(0, now_ms - message.received_ms) / 1000)
            parts.append(b"event: device\ndata: " + orjson.dumps(message.as_dict()) + b"\n")
    if not parts:
        return b""
    if newest:
        parts[-1] = f"id: {newest}\n".encode() + parts[-1]
    return b"\n".join(parts) + b"\n"


async def stream_events(board: MonitorBoard, subscription: Subscription) -> AsyncIterator[bytes]:
    """Yield a subscription as SSE bytes until it closes (the node stops, or it is dropped)."""
    settings = board.settings
    yield f"retry: {settings.sse_retry_ms}\n\n".encode()
    while True:
        messages = await subscription.next(settings.sse_heartbeat_secs)
        if messages is None:
            return
        yield render_messages(board, messages) if messages else HEARTBEAT


class MonitorStreamResponse(StreamingResponse):
    """A streaming response that closes its subscription however the stream ends."""

    def __init__(self, board: MonitorBoard, subscription: Subscription) -> None:
        super().__init__(
            stream_events(board, subscription),
            media_type=MEDIA_TYPE,
            headers={
                "cache-control": "no-cache",
                "x-accel-buffering": "no",  # nginx: pass each event on at once
            },
        )
        self.subscription = subscription

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream, then close the subscription (also when the client went away)."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.subscription.close()


def sse_response(
    board: MonitorBoard, class_ids: str | Sequence[str], last_event_id: str | None = None
) -> Response:
    """Answer with the live stream of classes the caller may read (check that first).

    Call it from an async handler (the subscription belongs to the running event loop).
    ``last_event_id`` is the ``Last-Event-ID`` header (or an ``?after=`` cursor) of a
    client that reconnects. Answers 503 with ``Retry-After`` when the monitor is full.
    """
    wanted = [class_ids] if isinstance(class_ids, str) else list(class_ids)
    try:
        subscription = board.subscribe(wanted, after=parse_cursor(last_event_id))
    except MonitorBusyError as exc:
        return JSONResponse(
            {"detail": str(exc)},
            status_code=503,
            headers={"Retry-After": str(exc.retry_after_secs)},
        )
    return MonitorStreamResponse(board, subscription)


__all__ = [
    "MEDIA_TYPE",
    "MonitorStreamResponse",
    "parse_cursor",
    "render_messages",
    "sse_response",
    "stream_events",
]
