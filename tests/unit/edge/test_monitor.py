"""The live monitor's board, feed and stream format, on a frozen clock (no server)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from support.compliance import assert_live_sink_compliance

from hopper.config import MonitorSettings, load_settings
from hopper.edge.monitor import (
    ClassSnapshot,
    DeviceChange,
    MonitorBoard,
    MonitorBusyError,
    MonitorSink,
    Roster,
    Sighting,
    StudentRef,
    parse_cursor,
)
from hopper.edge.monitor.presence import (
    MAX_TEXT_CHARS,
    sighting_from_event,
    sighting_from_json,
)
from hopper.edge.monitor.roster import ClassRef
from hopper.edge.monitor.sse import render_messages
from hopper.events import decode_batch, encode_batch
from hopper.observe.metrics import HopperMetrics
from hopper.pipeline import Resources, build_topology, check_topologies
from hopper.testing import NOW_MS, FrozenClock, make_event

SEC = 1000


def _roster() -> Roster:
    """Two classes: 5a (kid1, kid2), 5b (kid3); one book of 40 pages."""
    kids = {f"kid{n}": StudentRef(f"st{n}", f"kid{n}", f"Kid {n}") for n in (1, 2, 3)}
    return Roster(
        students=kids,
        classes={c: ClassRef(c, f"Class {c}", "s1") for c in ("5a", "5b")},
        members={"5a": (kids["kid1"], kids["kid2"]), "5b": (kids["kid3"],)},
        classes_of={
            "kid1": frozenset({"5a"}),
            "kid2": frozenset({"5a"}),
            "kid3": frozenset({"5b"}),
        },
        books={"b1": ("The Book", 40)},
        signature=(1,),
    )


def _board(clock: FrozenClock, **settings: Any) -> tuple[MonitorBoard, HopperMetrics]:
    metrics = HopperMetrics()
    board = MonitorBoard(MonitorSettings(**settings), clock, metrics)
    board.set_roster(_roster())
    return board, metrics


def _status(
    clock: FrozenClock,
    device: str = "tab1",
    user: str = "kid1",
    *,
    page: int = 3,
    screen_on: bool = True,
    battery: int = 80,
    app: str = "hopper.reader",
) -> Sighting:
    payload = {
        "foreground_app": app,
        "book_id": "b1",
        "page": page,
        "screen_on": screen_on,
        "battery_pct": battery,
    }
    return Sighting(device, user, "cam_status", clock.now, clock.now, "3.2.1", payload)


def _metric(metrics: HopperMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def _tile(board: MonitorBoard, class_id: str, device: str) -> dict[str, Any]:
    snapshot = board.snapshot(class_id)
    assert snapshot is not None
    (tile,) = [t.as_dict() for t in snapshot.tiles if t.device_id == device]
    return tile


def test_a_heartbeat_shows_the_student_book_page_of_n_and_battery() -> None:
    clock = FrozenClock()
    board, _ = _board(clock)
    board.observe([_status(clock)])
    snapshot = board.snapshot("5a")
    assert snapshot is not None
    (tile,) = snapshot.tiles
    assert tile.as_dict() == {
        "device_id": "tab1",
        "username": "kid1",
        "student_id": "st1",
        "display_name": "Kid 1",
        "state": "online",
        "app": "hopper.reader",
        "book_id": "b1",
        "book_title": "The Book",
        "page": 3,
        "page_count": 40,
        "screen_on": True,
        "battery_pct": 80,
        "app_version": "3.2.1",
        "last_seen_ms": NOW_MS,
    }
    assert [s.username for s in snapshot.not_seen] == ["kid2"]
    assert snapshot.counts == {"online": 1, "idle": 0, "stale": 0, "offline": 0}
    assert board.snapshot("5b") is not None and board.snapshot("5b").tiles == []  # type: ignore[union-attr]
    assert board.snapshot("nope") is None


def test_states_follow_missed_heartbeats_screen_and_activity() -> None:
    clock = FrozenClock()
    board, metrics = _board(clock, heartbeat_interval_secs=5, idle_after_secs=60)
    board.observe([_status(clock)])

    def state_after(ms: int) -> str:
        clock.advance(ms)
        board.tick()
        return str(_tile(board, "5a", "tab1")["state"])

    assert state_after(10 * SEC) == "online"  # exactly 2 intervals: not yet missed
    assert state_after(500) == "online"  # states are recomputed once a second
    assert state_after(500) == "stale"
    assert state_after(5 * SEC) == "offline"
    assert _metric(metrics, "monitor_devices", state="offline") == 1
    board.observe([_status(clock)])  # back
    assert _tile(board, "5a", "tab1")["state"] == "online"
    board.observe([_status(clock, screen_on=False)])
    assert _tile(board, "5a", "tab1")["state"] == "idle"
    board.observe([_status(clock, page=4)])
    # The same heartbeat again and again: nothing changes on it, so it turns idle.
    for _ in range(12):
        clock.advance(5 * SEC + 1)
        board.observe([_status(clock, page=4)])
        board.tick()
    assert _tile(board, "5a", "tab1")["state"] == "idle"
    board.observe([_status(clock, page=5)])
    assert _tile(board, "5a", "tab1")["state"] == "online"


def test_other_events_set_book_and_page_and_older_reports_do_not_undo_newer() -> None:
    clock = FrozenClock()
    board, _ = _board(clock)
    board.observe([_status(clock, page=3)])
    page_view = Sighting(
        "tab1",
        "kid1",
        "page_viewed",
        clock.now + 5,
        clock.now + 5,
        "",
        {"book_id": "b1", "page": 9},
    )
    board.observe([page_view])
    assert _tile(board, "5a", "tab1")["page"] == 9
    late = _status(clock, page=2)  # an older status, sent late (a backlog)
    late.received_ms = clock.now + 50
    board.observe([late])
    tile = _tile(board, "5a", "tab1")
    assert tile["page"] == 9 and tile["last_seen_ms"] == clock.now + 50
    closed = Sighting("tab1", "kid1", "book_closed", clock.now + 60, clock.now + 60, "", {})
    board.observe([closed])
    tile = _tile(board, "5a", "tab1")
    assert tile["book_id"] is None and tile["page"] is None and tile["page_count"] is None


@pytest.mark.anyio
async def test_at_most_one_change_per_device_per_second() -> None:
    clock = FrozenClock()
    board, _ = _board(clock)
    subscription = board.subscribe(["5a"])
    assert isinstance((await subscription.next(0))[0], ClassSnapshot)  # type: ignore[index]
    board.observe([_status(clock, page=1)])
    first = await subscription.next(0)
    assert first is not None and [c.fields.get("page") for c in first] == [1]  # type: ignore[union-attr]
    clock.advance(200)
    board.observe([_status(clock, page=2)])
    clock.advance(200)
    board.observe([_status(clock, page=3, battery=70)])
    board.tick()
    assert await subscription.next(0) == []  # held: less than a second since the last one
    clock.advance(600)
    board.tick()
    (held,) = await subscription.next(0)  # type: ignore[misc]
    assert isinstance(held, DeviceChange)
    assert held.fields["page"] == 3 and held.fields["battery_pct"] == 70
    assert held.received_ms == NOW_MS + 200  # the oldest event behind it: the honest delay
    subscription.close()


@pytest.mark.anyio
async def test_a_slow_subscriber_gets_one_merged_entry_per_device() -> None:
    clock = FrozenClock()
    board, metrics = _board(clock, device_update_interval_ms=0)
    subscription = board.subscribe(["5a"])
    await subscription.next(0)
    for n in range(1, 6):
        clock.advance(10)
        board.observe([_status(clock, page=n), _status(clock, "tab2", "kid2", battery=50 + n)])
    changes = await subscription.next(0)
    assert changes is not None
    by_device = {c.device_id: c for c in changes if isinstance(c, DeviceChange)}
    assert set(by_device) == {"tab1", "tab2"}
    assert by_device["tab1"].fields["page"] == 5 and by_device["tab2"].fields["battery_pct"] == 55
    assert by_device["tab1"].fields["display_name"] == "Kid 1"  # first seen: the whole tile
    assert _metric(metrics, "monitor_coalesced_total") == 8
    subscription.close()


@pytest.mark.anyio
async def test_a_full_client_queue_becomes_a_fresh_snapshot() -> None:
    clock = FrozenClock()
    board, metrics = _board(clock, client_queue_max_devices=1, device_update_interval_ms=0)
    subscription = board.subscribe(["5a"])
    await subscription.next(0)
    board.observe([_status(clock), _status(clock, "tab2", "kid2")])
    (snapshot,) = await subscription.next(0)  # type: ignore[misc]
    assert isinstance(snapshot, ClassSnapshot) and len(snapshot.tiles) == 2
    assert _metric(metrics, "monitor_resets_total", reason="queue_full") == 1
    board.observe([_status(clock, battery=10)])
    (change,) = await subscription.next(0)  # type: ignore[misc]
    assert isinstance(change, DeviceChange) and change.fields["battery_pct"] == 10
    subscription.close()


def test_changes_after_a_cursor_resume_and_an_old_cursor_resets() -> None:
    clock = FrozenClock()
    board, metrics = _board(clock, change_log_max=3, device_update_interval_ms=0)
    board.observe([_status(clock)])
    start = board.snapshot("5a")
    assert start is not None
    clock.advance(10)
    board.observe([_status(clock, "tab2", "kid2")])
    clock.advance(10)
    board.observe([_status(clock, "tab3", "kid3")])  # class 5b: not in 5a's changes
    after = board.changes_after("5a", start.cursor)
    assert after is not None and after.snapshot is None
    assert [c.device_id for c in after.changes] == ["tab2"]
    assert after.changes[0].fields["display_name"] == "Kid 2"  # whole tiles when resuming
    assert after.as_dict()["reset"] is False
    current = board.changes_after("5a", after.cursor)
    assert current is not None and current.changes == [] and current.snapshot is None
    for n in range(4):  # the log keeps 3 changes: the start cursor falls out
        clock.advance(10)
        board.observe([_status(clock, battery=n)])
    old = board.changes_after("5a", start.cursor)
    assert old is not None and old.snapshot is not None and old.as_dict()["reset"] is True
    future = board.changes_after("5a", board.cursor + 1_000)
    assert future is not None and future.snapshot is not None
    assert board.changes_after("5a", None).snapshot is not None  # type: ignore[union-attr]
    assert _metric(metrics, "monitor_resets_total", reason="cursor_expired") == 2


@pytest.mark.anyio
async def test_a_subscription_resumes_after_a_cursor() -> None:
    clock = FrozenClock()
    board, _ = _board(clock, device_update_interval_ms=0)
    board.observe([_status(clock)])
    cursor = board.cursor
    board.observe([_status(clock, "tab2", "kid2")])
    subscription = board.subscribe(["5a"], after=cursor)
    initial = await subscription.next(0)
    assert initial is not None
    assert [(type(m).__name__, getattr(m, "device_id", None)) for m in initial] == [
        ("DeviceChange", "tab2")
    ]
    subscription.close()
    assert await subscription.next(0) is None


@pytest.mark.anyio
async def test_a_device_that_changes_hands_moves_between_classes() -> None:
    clock = FrozenClock()
    board, _ = _board(clock, device_update_interval_ms=0)
    board.observe([_status(clock, "tab9", "kid1")])
    in_5a, in_5b = board.subscribe(["5a"]), board.subscribe(["5b"])
    await in_5a.next(0)
    await in_5b.next(0)
    clock.advance(10)
    board.observe([_status(clock, "tab9", "kid3")])  # kid3 (class 5b) logs in on it
    (gone,) = await in_5a.next(0)  # type: ignore[misc]
    (came,) = await in_5b.next(0)  # type: ignore[misc]
    assert isinstance(gone, DeviceChange) and gone.as_dict() == {
        "device_id": "tab9",
        "removed": True,
    }
    assert isinstance(came, DeviceChange) and came.fields["display_name"] == "Kid 3"
    assert [t.device_id for t in board.snapshot("5a").tiles] == []  # type: ignore[union-attr]
    in_5a.close()
    in_5b.close()


@pytest.mark.anyio
async def test_bounds_on_devices_and_subscribers() -> None:
    clock = FrozenClock()
    board, metrics = _board(clock, max_devices=2, max_subscribers=1, device_update_interval_ms=0)
    board.observe([_status(clock, "tab1")])
    clock.advance(10)
    board.observe([_status(clock, "tab2", "kid2")])
    subscription = board.subscribe(["5a"])
    await subscription.next(0)
    with pytest.raises(MonitorBusyError):
        board.subscribe(["5b"])
    clock.advance(10)
    board.observe([_status(clock, "tab3", "kid3")])  # a third device: the oldest goes
    assert {t.device_id for t in board.device_tiles()} == {"tab2", "tab3"}
    (removed,) = await subscription.next(0)  # type: ignore[misc]
    assert isinstance(removed, DeviceChange) and removed.is_removal
    assert _metric(metrics, "monitor_forgotten_total", reason="device_limit") == 1
    with pytest.raises(ValueError, match="classes"):
        board.subscribe([f"c{n}" for n in range(51)])
    subscription.close()
    board.subscribe(["5b"]).close()  # room again


def test_devices_unheard_for_a_day_are_forgotten() -> None:
    clock = FrozenClock()
    board, metrics = _board(clock, forget_after_secs=3600)
    board.observe([_status(clock)])
    clock.advance(3600 * SEC + 1)
    board.tick()
    assert board.device_tiles() == []
    assert _metric(metrics, "monitor_forgotten_total", reason="forgotten") == 1


def test_a_new_roster_renames_and_moves_devices() -> None:
    clock = FrozenClock()
    board, _ = _board(clock)
    board.observe([_status(clock, "tab1", "newkid")])  # not in any class yet
    assert board.snapshot("5a").tiles == []  # type: ignore[union-attr]
    roster = _roster()
    roster.students["newkid"] = StudentRef("st9", "newkid", "New Kid")
    roster.classes_of["newkid"] = frozenset({"5a"})
    board.set_roster(roster)
    assert _tile(board, "5a", "tab1")["display_name"] == "New Kid"


def test_hostile_reports_are_cut_and_checked() -> None:
    clock = FrozenClock()
    board, _ = _board(clock)
    huge = "x" * 100_000
    bad = _status(clock, app=huge)
    bad.payload.update(battery_pct=900, page=-4, screen_on="yes")
    board.observe([bad])
    tile = _tile(board, "5a", "tab1")
    assert len(tile["app"]) == MAX_TEXT_CHARS
    assert tile["battery_pct"] is None and tile["page"] is None and tile["screen_on"] is None
    for message in (b"", b"[]", b"{", b'{"device_id": 5}', b'{"device_id": "' + b"d" * 500 + b'"}'):
        assert sighting_from_json(message) is None
    good = orjson.dumps(
        {
            "type": "cam_status",
            "username": "kid1",
            "device_id": "tab1",
            "app_time_ms": NOW_MS,
            "received_ms": NOW_MS,
            "payload": {"battery_pct": 5},
        }
    )
    sighting = sighting_from_json(good)
    assert sighting is not None and sighting.payload == {"battery_pct": 5}
    (event,), _ = decode_batch(
        encode_batch([make_event("cam_status", {}, username="u", device_id="d" * 500)])
    )
    assert sighting_from_event(event, NOW_MS) is None


def test_sse_events_carry_the_newest_cursor_on_the_last_event() -> None:
    clock = FrozenClock()
    board, _ = _board(clock)
    changes = [
        DeviceChange("tab1", {"page": 2}, 17, NOW_MS),
        DeviceChange("tab2", {"removed": True}, 12, None),
    ]
    text = render_messages(board, changes).decode()
    assert text == (
        'event: device\ndata: {"device_id":"tab1","page":2}\n\n'
        'id: 17\nevent: device\ndata: {"device_id":"tab2","removed":true}\n\n'
    )
    assert parse_cursor("17") == 17 and parse_cursor(" 17 ") == 17
    for bad in (None, "", "-1", "1e9", "x", "9" * 20):
        assert parse_cursor(bad) is None


def test_the_default_edge_topology_feeds_the_monitor(tmp_path: Path) -> None:
    settings = load_settings(store={"sqlite_path": tmp_path / "e.db"})
    assert "monitor" in settings.pipeline.edge.sinks and check_topologies(settings) == []
    metrics = HopperMetrics()
    resources = Resources(settings, metrics, FrozenClock())
    topology = build_topology(settings, "edge", FrozenClock(), metrics, resources)
    (sink,) = [s for s in topology.live_sinks if isinstance(s, MonitorSink)]
    assert resources.live_sink("monitor") is sink  # one per process
    problems = check_topologies(load_settings(pipeline={"edge": {"sinks": ["store", "x"]}}))
    assert any("monitor" in p for p in problems)  # named among the known sinks
    resources.close()


def test_the_sink_never_blocks_and_counts_what_it_drops(tmp_path: Path) -> None:
    settings = load_settings(
        store={"sqlite_path": tmp_path / "e.db"}, monitor={"buffer_max_events": 30}
    )
    metrics = HopperMetrics()
    sink = MonitorSink("monitor", settings, FrozenClock(), metrics)
    events, _ = decode_batch(
        encode_batch(
            make_event("cam_status", {"battery_pct": n}, username="kid1", device_id="tab1")
            for n in range(20)
        )
    )
    assert_live_sink_compliance(sink, events)
    assert _metric(metrics, "events_dropped_total", component="monitor", reason="buffer_full") > 0


@pytest.mark.anyio
async def test_the_sink_folds_commits_into_the_board(tmp_path: Path) -> None:
    settings = load_settings(store={"sqlite_path": tmp_path / "e.db"})
    clock = FrozenClock()
    sink = MonitorSink("monitor", settings, clock, HopperMetrics())
    sink.start()
    try:
        events, _ = decode_batch(
            encode_batch(
                make_event(
                    "cam_status",
                    {"battery_pct": 90 - n, "screen_on": True},
                    username="kid1",
                    device_id="tab1",
                    app_time_ms=NOW_MS + n,
                )
                for n in range(5)
            )
        )
        sink.offer([(events, clock.now)])
        for _ in range(100):
            tiles = sink.board.device_tiles()
            if tiles:
                break
            await asyncio.sleep(0.02)
        (tile,) = tiles
        assert tile.battery_pct == 86 and tile.last_seen_ms == NOW_MS  # the newest status
    finally:
        sink.stop()
