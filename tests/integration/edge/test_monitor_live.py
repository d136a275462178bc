"""The live monitor through a real server: heartbeats sent through ingest reach the snapshot,
the polling endpoint and the SSE stream; silent tablets turn stale and offline on schedule;
teachers see only their classes; the Redis feed against the real Redis; warm start.

The edge app runs in uvicorn (in a thread, with the node's own protocol classes) on a free
port, with short heartbeat intervals so that schedules take a second or two.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from conftest import REDIS_URL, require_service

from hopper.access import Scope
from hopper.access import create_token as create
from hopper.client import make_event
from hopper.config import HopperSettings, load_settings
from hopper.edge import create_app
from hopper.edge.server import uvicorn_config
from hopper.events import encode_batch
from hopper.store import open_event_store
from hopper.store.engine import engine_for
from hopper.store.reference import (
    ec_books,
    ec_class_members,
    ec_class_teachers,
    ec_classes,
    ec_schools,
    ec_students,
    ec_teachers,
)
from hopper.testing import NOW_MS, bearer, free_port

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

PROTOBUF = {"content-type": "application/x-protobuf"}
MONITOR = {
    "heartbeat_interval_secs": 0.5,  # stale after 1 s of silence, offline after 1.5 s
    "stale_after_missed": 2,
    "offline_after_missed": 3,
    "sse_heartbeat_secs": 0.5,
    "roster_refresh_secs": 0.5,
}


def _row(**values: Any) -> dict[str, Any]:
    digest = hashlib.blake2b(repr(sorted(values.items())).encode(), digest_size=16).digest()
    return {**values, "row_hash": digest, "changed_ms": NOW_MS}


def _reference(settings: HopperSettings) -> None:
    """Class 5a (kid1, kid2) taught by t1; class 5b (kid3) taught by t2; book b1 of 30 pages."""
    engine = engine_for(settings.store)
    try:
        with engine.begin() as conn:
            conn.execute(ec_schools.insert(), [_row(school_id="s1", name="One", time_zone="UTC")])
            conn.execute(
                ec_students.insert(),
                [
                    _row(student_id=f"st{n}", username=f"kid{n}", display_name=f"Kid {n}",
                         school_id="s1", grade="5")
                    for n in (1, 2, 3)
                ],
            )  # fmt: skip
            conn.execute(
                ec_classes.insert(),
                [_row(class_id=c, school_id="s1", name=c, grade="5") for c in ("5a", "5b")],
            )
            conn.execute(
                ec_class_members.insert(),
                [
                    _row(class_id="5a", student_id="st1"),
                    _row(class_id="5a", student_id="st2"),
                    _row(class_id="5b", student_id="st3"),
                ],
            )
            conn.execute(
                ec_teachers.insert(),
                [
                    _row(teacher_id=t, username=t, display_name=t, school_id="s1")
                    for t in ("t1", "t2")
                ],
            )
            conn.execute(
                ec_class_teachers.insert(),
                [_row(class_id="5a", teacher_id="t1"), _row(class_id="5b", teacher_id="t2")],
            )
            conn.execute(
                ec_books.insert(), [_row(book_id="b1", title="Book", page_count=30, language="en")]
            )
    finally:
        engine.dispose()


def _migrate(settings: HopperSettings) -> None:
    """Create the store's tables, so the reference data can go in before the node starts."""
    store = open_event_store(settings.store)
    try:
        store.migrate()
    finally:
        store.close()


def _token(settings: HopperSettings, *scopes: Scope, subject: str | None = None) -> str:
    return create(settings.store, "t", list(scopes), None, NOW_MS, subject=subject).token


@dataclass
class Node:
    """A running edge node and the tokens to talk to it."""

    settings: HopperSettings
    base_url: str
    tokens: dict[str, str] = field(default_factory=dict)
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None

    def heartbeat(self, device: str = "tab1", user: str = "kid1", **fields: Any) -> None:
        """Send one CAM status through real ingest (HTTP) and check it was stored."""
        payload = {
            "foreground_app": "hopper.reader", "book_id": "b1", "page": 4, "screen_on": True,
            "battery_pct": 77, **fields,
        }  # fmt: skip
        event = make_event("cam_status", payload, username=user, device_id=device, school_id="s1")
        answer = httpx.post(
            f"{self.base_url}/v1/events",
            content=encode_batch([event]),
            headers={**PROTOBUF, **bearer(self.tokens["ingest"])},
            timeout=10,
        ).json()
        assert answer["accepted"] == 1, answer

    def stop(self) -> float:
        """Stop the server like an operator would; return how long it took."""
        assert self.server is not None and self.thread is not None
        started = time.monotonic()
        self.server.should_exit = True
        self.thread.join(20)
        assert not self.thread.is_alive(), "the server did not stop"
        return time.monotonic() - started


@contextlib.contextmanager
def serve(settings: HopperSettings) -> Iterator[Node]:
    """Run the edge app in uvicorn on a free port until the block ends."""
    port = free_port()
    settings = settings.model_copy(
        update={"server": settings.server.model_copy(update={"port": port})}
    )
    app = create_app(settings, run_jobs=False)
    server = uvicorn.Server(uvicorn_config(app, settings, app.state.guard))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    node = Node(settings, f"http://127.0.0.1:{port}", server=server, thread=thread)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield node
    finally:
        if thread.is_alive():
            node.stop()


def _settings(tmp_path: Path, **overrides: Any) -> HopperSettings:
    return load_settings(
        store={"sqlite_path": tmp_path / "events.db"}, monitor={**MONITOR, **overrides}
    )


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    settings = _settings(tmp_path)
    _migrate(settings)
    _reference(settings)
    tokens = {
        "ingest": _token(settings, Scope.INGEST),
        "t1": _token(settings, Scope.TEACHERS, subject="teacher:t1"),
        "admin": _token(settings, Scope.ADMIN),
        "portal": _token(settings, Scope.PORTAL),
    }
    with serve(settings) as running:
        running.tokens = tokens
        yield running


@dataclass
class SseEvent:
    event: str
    data: Any
    id: str | None
    at: float


async def sse_events(response: httpx.Response) -> AsyncIterator[SseEvent | str]:
    """Parse an SSE stream: yield events, and comment lines as strings."""
    event, data, last_id = "message", "", None
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield line
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data += line[6:]
        elif line.startswith("id: "):
            last_id = line[4:]
        elif line == "" and data:
            yield SseEvent(event, orjson.loads(data), last_id, time.monotonic())
            event, data = "message", ""


@contextlib.asynccontextmanager
async def stream(
    node: Node, class_id: str, token: str, **headers: str
) -> AsyncIterator[tuple[httpx.Response, AsyncIterator[SseEvent | str]]]:
    async with (
        httpx.AsyncClient(base_url=node.base_url, timeout=10) as client,
        client.stream(
            "GET", f"/v1/monitor/classes/{class_id}/events", headers={**bearer(token), **headers}
        ) as response,
    ):
        yield response, sse_events(response)


async def next_event(events: AsyncIterator[SseEvent | str], timeout: float = 5.0) -> SseEvent:
    """Return the next event of a stream, skipping heartbeats."""

    async def first() -> SseEvent:
        async for item in events:
            if isinstance(item, SseEvent):
                return item
        raise AssertionError("the stream ended")

    return await asyncio.wait_for(first(), timeout)


async def test_a_heartbeat_through_ingest_reaches_snapshot_and_stream_within_2_s(
    node: Node,
) -> None:
    async with stream(node, "5a", node.tokens["t1"]) as (response, events):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        snapshot = await next_event(events)
        assert snapshot.event == "snapshot" and snapshot.data["devices"] == []
        assert {s["username"] for s in snapshot.data["students_not_seen"]} == {"kid1", "kid2"}
        assert snapshot.id == snapshot.data["cursor"]
        sent = time.monotonic()
        await asyncio.to_thread(node.heartbeat)
        change = await next_event(events)
        assert change.at - sent < 2.0
        assert change.event == "device" and change.data["device_id"] == "tab1"
        assert change.data["display_name"] == "Kid 1" and change.data["page_count"] == 30
        assert change.data["state"] == "online" and change.data["battery_pct"] == 77
        assert change.id is not None and int(change.id) > int(snapshot.data["cursor"])

        # A quiet stream carries heartbeat comments.
        async def comment() -> str:
            async for item in events:
                if isinstance(item, str):
                    return item
            raise AssertionError("the stream ended")

        assert await asyncio.wait_for(comment(), 3) == ": heartbeat"
    async with httpx.AsyncClient(base_url=node.base_url, headers=bearer(node.tokens["t1"])) as c:
        body = (await c.get("/v1/monitor/classes/5a")).json()
    (tile,) = body["devices"]
    assert (tile["username"], tile["book_title"], tile["page"]) == ("kid1", "Book", 4)
    assert [s["username"] for s in body["students_not_seen"]] == ["kid2"]


async def test_a_silent_tablet_turns_stale_then_offline_on_schedule(node: Node) -> None:
    async with stream(node, "5a", node.tokens["t1"]) as (_, events):
        await next_event(events)
        await asyncio.to_thread(node.heartbeat)
        sent = time.monotonic()
        states: dict[str, float] = {}
        while "offline" not in states:
            change = await next_event(events, timeout=6)
            if "state" in change.data:
                states.setdefault(change.data["state"], change.at - sent)
    # stale after 2 missed intervals of 0.5 s, offline after 3; states are swept each second.
    assert 1.0 <= states["stale"] < 2.5, states
    assert 1.5 <= states["offline"] < 3.5, states
    assert states["stale"] < states["offline"]


async def test_polling_answers_changes_after_a_cursor_with_a_back_off(node: Node) -> None:
    async with httpx.AsyncClient(base_url=node.base_url, headers=bearer(node.tokens["t1"])) as c:
        first = await c.get("/v1/monitor/classes/5a/changes")
        assert first.status_code == 200 and first.json()["reset"] is True  # no cursor: a snapshot
        cursor = first.json()["cursor"]
        await asyncio.to_thread(node.heartbeat, page=9)
        deadline = time.monotonic() + 2
        while True:
            answer = await c.get(f"/v1/monitor/classes/5a/changes?after={cursor}")
            body = answer.json()
            if body["devices"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert body["reset"] is False
        assert [(d["device_id"], d["page"]) for d in body["devices"]] == [("tab1", 9)]
        assert body["retry_after_ms"] >= 2000 and int(answer.headers["retry-after"]) >= 2
        same = await c.get(
            f"/v1/monitor/classes/5a/changes?after={body['cursor']}",
            headers={"if-none-match": answer.headers["etag"]},
        )
        assert same.status_code in (200, 304)  # 304 unless a state changed meanwhile
        for bad in ("abc", "-1", "9" * 30):
            assert (await c.get(f"/v1/monitor/classes/5a/changes?after={bad}")).status_code == 422


async def test_a_reconnecting_stream_resumes_from_last_event_id(node: Node) -> None:
    async with stream(node, "5a", node.tokens["t1"]) as (_, events):
        await next_event(events)
        await asyncio.to_thread(node.heartbeat)
        seen = await next_event(events)
    await asyncio.to_thread(node.heartbeat, "tab2", "kid2")
    assert seen.id is not None
    async with stream(node, "5a", node.tokens["t1"], **{"last-event-id": seen.id}) as (_, again):
        resumed = await next_event(again)
    assert resumed.event == "device" and resumed.data["device_id"] == "tab2"
    async with stream(node, "5a", node.tokens["t1"], **{"last-event-id": "123"}) as (_, old):
        assert (await next_event(old)).event == "snapshot"  # a cursor of long ago


async def test_teacher_a_is_refused_class_b_on_snapshot_polling_and_stream(node: Node) -> None:
    t1, admin = node.tokens["t1"], node.tokens["admin"]
    async with httpx.AsyncClient(base_url=node.base_url, timeout=10) as c:
        for path in ("", "/changes", "/events"):
            url = f"/v1/monitor/classes/5b{path}"
            assert (await c.get(url, headers=bearer(t1))).status_code == 403
            assert (await c.get(url)).status_code == 401
            assert (await c.get(url, headers=bearer(node.tokens["ingest"]))).status_code == 403
            assert (await c.get(url, headers=bearer(node.tokens["portal"]))).status_code == 403
            unknown = await c.get(f"/v1/monitor/classes/nope{path}", headers=bearer(admin))
            assert unknown.status_code == 404
            assert (
                await c.get(f"/v1/monitor/classes/nope{path}", headers=bearer(t1))
            ).status_code == 403
        assert (await c.get("/v1/monitor/classes/5b", headers=bearer(admin))).status_code == 200
        too_long = await c.get(f"/v1/monitor/classes/{'x' * 300}", headers=bearer(admin))
        assert too_long.status_code == 422
        metrics = (await c.get("/metrics", headers=bearer(admin))).text
    assert "monitor_subscribers" in metrics and "monitor_changes_total" in metrics


async def test_stopping_the_server_ends_open_streams(node: Node) -> None:
    async with stream(node, "5a", node.tokens["t1"]) as (_, events):
        await next_event(events)
        took = await asyncio.to_thread(node.stop)

        async def ended() -> None:
            async for _ in events:
                pass

        await asyncio.wait_for(ended(), 5)
    assert took < 5.0


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_a_restart_keeps_the_monitor_warm(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    settings = _settings(tmp_path)
    if store == "postgres":
        url = request.getfixturevalue("postgres_url")
        settings = load_settings(
            store={"backend": "postgres", "postgres_url": url}, monitor=MONITOR
        )
    _migrate(settings)
    _reference(settings)
    ingest = _token(settings, Scope.INGEST)
    admin = _token(settings, Scope.ADMIN)
    with serve(settings) as first:
        first.tokens = {"ingest": ingest}
        first.heartbeat(battery_pct=41)
    with serve(settings) as second:
        async with httpx.AsyncClient(base_url=second.base_url, headers=bearer(admin)) as c:
            deadline = time.monotonic() + 3
            while not (body := (await c.get("/v1/monitor/classes/5a")).json())["devices"]:
                assert time.monotonic() < deadline, "no device after the restart"
                await asyncio.sleep(0.05)
    (tile,) = body["devices"]
    assert tile["battery_pct"] == 41 and tile["display_name"] == "Kid 1"


async def test_the_redis_feed_follows_lp_events_from_other_processes(tmp_path: Path) -> None:
    require_service("redis")
    import redis

    channel = f"test-lp-events-{uuid.uuid4().hex[:8]}"  # pub/sub ignores Redis db numbers
    settings = load_settings(
        store={"sqlite_path": tmp_path / "events.db"},
        monitor={**MONITOR, "source": "redis"},
        pubsub={"backend": "redis", "redis_url": REDIS_URL, "lp_events_channel": channel},
    )
    _migrate(settings)
    _reference(settings)
    with serve(settings) as running:
        running.tokens = {
            "ingest": _token(settings, Scope.INGEST),
            "t1": _token(settings, Scope.TEACHERS, subject="teacher:t1"),
        }
        client = redis.Redis.from_url(REDIS_URL)
        try:
            async with stream(running, "5a", running.tokens["t1"]) as (_, events):
                await next_event(events)
                deadline = time.monotonic() + 5
                while client.pubsub_numsub(channel)[0][1] < 1:  # the monitor has subscribed
                    assert time.monotonic() < deadline, "the monitor did not subscribe"
                    await asyncio.sleep(0.05)
                # Another process's node publishes what it stored, as JSON on lp-events.
                now = int(time.time() * 1000)
                message = {
                    "type": "cam_status", "username": "kid2", "device_id": "tab-elsewhere",
                    "school_id": "s1", "app_time_ms": now, "received_ms": now,
                    "app_version": "1.0", "platform": "android", "session_id": "",
                    "hash": "00", "payload": {"battery_pct": 12, "screen_on": True},
                }  # fmt: skip
                client.publish(channel, orjson.dumps(message))
                client.publish(channel, b"not json at all")  # hostile: skipped, counted
                change = await next_event(events)
                assert (change.data["device_id"], change.data["battery_pct"]) == (
                    "tab-elsewhere",
                    12,
                )
                # This node's own ingest reaches the monitor through Redis too.
                sent = time.monotonic()
                await asyncio.to_thread(running.heartbeat)
                change = await next_event(events)
                assert change.data["device_id"] == "tab1" and change.at - sent < 2.0
        finally:
            client.close()
