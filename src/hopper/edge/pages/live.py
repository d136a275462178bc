"""The live classroom: a tile per student's tablet, sortable, a table view, a seat layout.

Each tile names the student (or their pseudonym), and shows the app, the book and page
*n* of *N*, the battery, when the tablet was last heard from and its state as a word and a
symbol (online, idle, stale, offline), so colour is never the only cue. The page arrives
with the whole snapshot rendered; then ``live.js`` follows the page's own server-sent
events (``/live/stream``: ``event: change`` when a tile of the class changed, a heartbeat
comment every 15 s) and fetches the tiles fragment again, at most once a second. The
stream carries no names (pseudonyms are the server's business); without JavaScript or
EventSource, htmx polls the fragment every 5 s, and without either the page reloads.

The tiles come from the live monitor's board (``hopper.edge.monitor``, the node's
``monitor``) when the edge topology has its ``monitor`` sink; otherwise they are read from
the store (each member's latest event and latest ``cam_status``), with the states from the
same ``monitor.*`` heartbeat rules.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from hopper.edge.monitor import MonitorBusyError
from hopper.edge.pages.classes import class_id_of, members
from hopper.edge.pages.i18n import N_
from hopper.edge.pages.site import Page, check_csrf, open_page, read_form, redirect
from hopper.store.reference import ec_books
from hopper.store.schema import reader_events
from hopper.store.users import hopper_seat_layouts

SORTS = ("name", "state", "battery", "seat")
VIEWS = ("tiles", "table")
STATE_ORDER = {"online": 0, "idle": 1, "stale": 2, "offline": 3, "none": 4}
MAX_SEAT = 30


def _payload(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    try:
        loaded = orjson.loads(value or "{}")
    except orjson.JSONDecodeError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def state_of(age_ms: int | None, stale_after_ms: float, offline_after_ms: float) -> str:
    """A tablet's state from how long ago it was last heard from (without the monitor)."""
    if age_ms is None:
        return "none"
    if age_ms <= stale_after_ms:
        return "online"
    if age_ms <= offline_after_ms:
        return "stale"
    return "offline"


def seat_layout(conn: sa.Connection, class_id: str) -> dict[str, tuple[int, int]]:
    """The saved seats of a class: student key -> (row, column)."""
    raw = conn.execute(
        sa.select(hopper_seat_layouts.c.layout).where(hopper_seat_layouts.c.class_id == class_id)
    ).scalar()
    if raw is None:
        return {}
    try:
        loaded = json.loads(raw)
    except ValueError:
        return {}
    return {
        str(k): (int(v[0]), int(v[1]))
        for k, v in loaded.items()
        if isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) for x in v)
    }


def board_of(page: Page) -> Any:
    """The live monitor's board, or None when the node runs without it."""
    return getattr(page.site.node, "monitor", None)


def _monitor_snapshot(page: Page, class_id: str) -> dict[str, dict[str, Any]] | None:
    board = board_of(page)
    if board is None:
        return None
    snapshot = board.snapshot(class_id)
    if snapshot is None:
        return None
    tiles: dict[str, dict[str, Any]] = {}
    for tile in snapshot.tiles:
        # A student on two tablets: the tile heard from last wins.
        if tile.username in tiles and tiles[tile.username]["last_seen_ms"] >= tile.last_seen_ms:
            continue
        tiles[tile.username] = {
            "device_id": tile.device_id,
            "last_seen_ms": tile.last_seen_ms,
            "app_version": tile.app_version,
            "app": tile.app,
            "book_id": tile.book_id,
            "book_title": tile.book_title,
            "page": tile.page,
            "page_count": tile.page_count,
            "battery": tile.battery_pct,
            "screen_on": tile.screen_on,
            "state": str(tile.state),
        }
    return tiles


def _store_snapshot(conn: sa.Connection, usernames: list[str]) -> dict[str, dict[str, Any]]:
    e = reader_events
    latest = (
        sa.select(e.c.username, sa.func.max(e.c.id).label("id"))
        .where(e.c.username.in_(usernames))
        .group_by(e.c.username)
        .subquery()
    )
    status = (
        sa.select(e.c.username, sa.func.max(e.c.id).label("id"))
        .where(e.c.username.in_(usernames), e.c.event_type == "cam_status")
        .group_by(e.c.username)
        .subquery()
    )
    snapshot: dict[str, dict[str, Any]] = {}
    for r in conn.execute(
        sa.select(e.c.username, e.c.device_id, e.c.app_time_ms, e.c.app_version).join(
            latest, latest.c.id == e.c.id
        )
    ):
        snapshot[r.username] = {
            "device_id": r.device_id,
            "last_seen_ms": int(r.app_time_ms),
            "app_version": r.app_version,
        }
    statuses = sa.select(e.c.username, e.c.payload).join(status, status.c.id == e.c.id)
    for username, payload in conn.execute(statuses):
        p = _payload(payload)
        entry = snapshot.setdefault(username, {})
        entry.update(
            {
                "app": p.get("foreground_app") or None,
                "book_id": p.get("book_id") or None,
                "page": p.get("page") or None,
                "battery": p.get("battery_pct"),
                "screen_on": p.get("screen_on"),
            }
        )
    return snapshot


def live_tiles(page: Page, class_id: str) -> dict[str, Any]:
    """The class's tiles, sorted as asked, with the header counts."""
    params = page.request.query_params
    sort = params.get("sort", "name")
    sort = sort if sort in SORTS else "name"
    view = params.get("view", "tiles")
    view = view if view in VIEWS else "tiles"
    rules = page.site.settings.monitor
    stale_ms = rules.heartbeat_interval_secs * rules.stale_after_missed * 1000
    offline_ms = rules.heartbeat_interval_secs * rules.offline_after_missed * 1000
    now = page.site.clock.now_ms()
    with page.connect() as conn:
        klass = page.scope.require_class(conn, class_id)
        names = members(conn, page.scope, class_id)
        snapshot = _monitor_snapshot(page, class_id)
        is_live = snapshot is not None
        if snapshot is None:
            snapshot = _store_snapshot(conn, list(names))
        seats = seat_layout(conn, class_id)
        book_ids = {s["book_id"] for s in snapshot.values() if s.get("book_id")}
        titles = {
            r.book_id: (r.title, r.page_count)
            for r in conn.execute(
                sa.select(ec_books.c.book_id, ec_books.c.title, ec_books.c.page_count).where(
                    ec_books.c.book_id.in_(sorted(book_ids))
                )
            )
        }
    tiles = []
    for username, name in names.items():
        s = snapshot.get(username, {})
        last = s.get("last_seen_ms")
        age = None if last is None else max(0, now - int(last))
        key = page.scope.student_key(username)
        title, page_count = titles.get(s.get("book_id"), (s.get("book_title"), s.get("page_count")))
        tiles.append(
            {
                "key": key,
                "name": name,
                "device_id": s.get("device_id"),
                "app": s.get("app"),
                "book": title or s.get("book_id"),
                "page": s.get("page"),
                "page_count": page_count,
                "battery": s.get("battery"),
                "age_s": None if age is None else age // 1000,
                "last_seen_ms": last,
                "state": s.get("state") or state_of(age, stale_ms, offline_ms),
                "seat": seats.get(key),
            }
        )
    if sort == "state":
        tiles.sort(key=lambda t: (STATE_ORDER[t["state"]], t["name"].casefold()))
    elif sort == "battery":
        tiles.sort(key=lambda t: (t["battery"] is None, t["battery"] or 0, t["name"].casefold()))
    elif sort == "seat":
        tiles.sort(key=lambda t: (t["seat"] is None, t["seat"] or (0, 0), t["name"].casefold()))
    else:
        tiles.sort(key=lambda t: t["name"].casefold())
    counts = {state: 0 for state in STATE_ORDER}
    for tile in tiles:
        counts[tile["state"]] += 1
    return {
        "klass": klass,
        "tiles": tiles,
        "counts": counts,
        "sort": sort,
        "view": view,
        "sorts": SORTS,
        "has_seats": bool(seats),
        "now_ms": now,
        "is_live": is_live,
    }


def live_page(request: Request) -> Response:
    """The live classroom page, with the whole snapshot rendered."""
    page = open_page(request)
    values = live_tiles(page, class_id_of(request))
    template = "fragments/live_tiles.html" if page.is_fragment else "live.html"
    return page.render(template, **values)


def live_fragment(request: Request) -> Response:
    """Only the tiles (or table) and counts: what the page polls."""
    page = open_page(request)
    return page.render("fragments/live_tiles.html", **live_tiles(page, class_id_of(request)))


HEARTBEAT_SECS = 15.0
REFRESH_SECS = 1.0


async def live_stream(request: Request) -> Response:
    """Server-sent events for one class: ``change`` when its tiles changed (no names)."""
    page = await run_in_threadpool(open_page, request)
    class_id = class_id_of(request)

    def check() -> None:
        with page.connect() as conn:
            page.scope.require_class(conn, class_id)

    await run_in_threadpool(check)
    board = board_of(page)
    if board is None:
        raise HTTPException(status_code=404, detail=N_("The live monitor is not running."))
    try:
        subscription = board.subscribe([class_id])
    except MonitorBusyError:
        return Response(
            "The live monitor is full; the page falls back to polling.",
            status_code=503,
            headers={"retry-after": "10"},
        )

    async def events() -> AsyncIterator[bytes]:
        try:
            yield b"retry: 3000\n\n"
            while True:
                messages = await subscription.next(HEARTBEAT_SECS)
                if messages is None:
                    return
                if not messages:
                    yield b": heartbeat\n\n"
                    continue
                yield f"event: change\ndata: {len(messages)}\n\n".encode()
                # At most one refresh a second: changes meanwhile wait in the queue,
                # which keeps only each device's latest value.
                await asyncio.sleep(REFRESH_SECS)
        finally:
            subscription.close()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


def seats_page(request: Request) -> Response:
    """The seat layout form: a row and a column for each student."""
    page = open_page(request)
    class_id = class_id_of(request)
    with page.connect() as conn:
        klass = page.scope.require_class(conn, class_id)
        names = members(conn, page.scope, class_id)
        seats = seat_layout(conn, class_id)
    students = sorted(
        (
            {
                "key": page.scope.student_key(u),
                "name": n,
                "seat": seats.get(page.scope.student_key(u)),
            }
            for u, n in names.items()
        ),
        key=lambda s: str(s["name"]).casefold(),
    )
    return page.render("seats.html", klass=klass, students=students, max_seat=MAX_SEAT)


async def save_seats(request: Request) -> Response:
    """Save a class's seat layout (keys of students in the class only)."""
    page = await run_in_threadpool(open_page, request)
    form = await read_form(request)
    check_csrf(form, page.session.csrf_token)
    class_id = class_id_of(request)

    def save() -> None:
        with page.site.engine.begin() as conn:
            page.scope.require_class(conn, class_id)
            keys = {page.scope.student_key(u) for u in members(conn, page.scope, class_id)}
            layout: dict[str, list[int]] = {}
            for key in keys:
                row, col = form.get(f"row-{key}", ""), form.get(f"col-{key}", "")
                if not row and not col:
                    continue
                try:
                    r, c = int(row), int(col)
                except ValueError:
                    raise HTTPException(
                        status_code=400, detail=N_("A seat is a row and a column, both numbers.")
                    ) from None
                if not (1 <= r <= MAX_SEAT and 1 <= c <= MAX_SEAT):
                    raise HTTPException(
                        status_code=400, detail=N_("Rows and columns go from 1 to 30.")
                    )
                layout[key] = [r, c]
            t = hopper_seat_layouts
            conn.execute(t.delete().where(t.c.class_id == class_id))
            conn.execute(
                t.insert().values(
                    class_id=class_id,
                    layout=json.dumps(layout, sort_keys=True),
                    updated_ms=page.site.clock.now_ms(),
                    updated_by=page.user.username,
                )
            )

    await run_in_threadpool(save)
    return redirect(f"/ui/classes/{class_id}/live?sort=seat")


def routes() -> list[BaseRoute]:
    """The live classroom's routes."""
    return [
        Route("/classes/{class_id}/live", live_page),
        Route("/classes/{class_id}/live/tiles", live_fragment),
        Route("/classes/{class_id}/live/stream", live_stream),
        Route("/classes/{class_id}/seats", seats_page, methods=["GET"]),
        Route("/classes/{class_id}/seats", save_seats, methods=["POST"]),
    ]
