"""The component contract (tests/support/compliance.py) over every stage and sink."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REDIS_URL, require_service
from support.compliance import (
    assert_durable_sink_compliance,
    assert_live_sink_compliance,
    assert_stage_compliance,
)

from hopper.config import load_settings
from hopper.events import decode_batch, encode_batch
from hopper.events._pb import events_pb2 as pb
from hopper.observe.metrics import HopperMetrics
from hopper.pipeline import STAGES, Origin
from hopper.pubsub import ChannelSink, render_json, render_raw
from hopper.sinks import PendingWrite
from hopper.store import open_event_store
from hopper.testing import NOW_MS, FrozenClock, ListSink, make_batch, page_view

pytestmark = pytest.mark.integration

# Good events, repeats, bad bytes, missing fields, an old and a future event, another school.
PAYLOADS = [
    make_batch(5),
    encode_batch([page_view(1), page_view(1), page_view(2)]),
    b"\xff\xfe garbage",
    b"\x08\x01",
    encode_batch([page_view(3), b"\x0a\xff", pb.Event(username="u").SerializeToString()]),
    encode_batch([page_view(4, app_time_ms=NOW_MS - 90 * 86_400_000)]),
    encode_batch([page_view(5, app_time_ms=NOW_MS + 86_400_000)]),
    b"",
]
ORIGINS = [Origin("test", "c", None), Origin("test", "c", frozenset({"school-001"}))]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_keeps_the_contract(name: str) -> None:
    stage = STAGES[name](load_settings(), FrozenClock(NOW_MS))
    rejected = assert_stage_compliance(stage, PAYLOADS, ORIGINS)
    expected = {
        "decode": {"undecodable"},
        "authorize": set(),  # every test event is school-001's
        "validate": {"missing_field", "too_old", "in_future"},
        "dedup": {"duplicate"},
    }[name]
    assert expected <= set(rejected)


def test_authorize_refuses_other_schools_within_the_contract() -> None:
    stage = STAGES["authorize"](load_settings(), FrozenClock(NOW_MS))
    only_b = Origin("test", "c", frozenset({"school-b"}))
    rejected = assert_stage_compliance(stage, PAYLOADS, [only_b])
    assert set(rejected) == {"school_not_allowed"}


def _groups() -> list[list[PendingWrite]]:
    events, _ = decode_batch(make_batch(30))
    return [
        [PendingWrite("test", NOW_MS, events[:10]), PendingWrite("test", NOW_MS, events[10:20])],
        [PendingWrite("test", NOW_MS, events[20:] + events[:2])],  # repeats across groups
    ]


@pytest.fixture(params=["sqlite", "postgres"])
def event_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    if request.param == "sqlite":
        settings = load_settings(store={"sqlite_path": tmp_path / "e.db"}).store
    else:
        url = request.getfixturevalue("postgres_url")
        settings = load_settings(store={"backend": "postgres", "postgres_url": url}).store
    store = open_event_store(settings)
    store.migrate()
    yield store
    store.close()


def test_event_stores_keep_the_durable_sink_contract(event_store: object) -> None:
    assert_durable_sink_compliance(event_store, _groups(), dedups=True)  # type: ignore[arg-type]


@pytest.mark.parametrize("dedup", [True, False])
def test_the_list_sink_keeps_the_durable_sink_contract(dedup: bool) -> None:
    assert_durable_sink_compliance(ListSink(dedup=dedup), _groups(), dedups=dedup)


@pytest.mark.parametrize("backend", ["memory", "redis"])
@pytest.mark.parametrize("kind", ["protos", "lp-events"])
def test_channel_sinks_keep_the_live_sink_contract(backend: str, kind: str) -> None:
    if backend == "redis":
        require_service("redis")
        from hopper.pubsub.redis import RedisChannels

        channels: object = RedisChannels(REDIS_URL)
    else:
        from hopper.pubsub.memory import MemoryChannels

        channels = MemoryChannels()
    render, fmt = (render_raw, "protobuf") if kind == "protos" else (render_json(), "json")
    sink = ChannelSink(
        kind, channels, f"compliance-{kind}", render, HopperMetrics(),  # type: ignore[arg-type]
        message_format=fmt, max_events=50,
    )  # fmt: skip
    events, _ = decode_batch(make_batch(20))
    assert_live_sink_compliance(sink, events)


@pytest.fixture(params=["sqlite", "kafka", "nats"])
def topic_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    from hopper.pipeline.topics import open_topic_log

    if request.param == "sqlite":
        settings = load_settings(topics={"sqlite_path": tmp_path / "t.db"}).topics
        log = open_topic_log(settings)
        yield log
        log.close()
    elif request.param == "kafka":
        from support.servers import tansu

        with tansu(tmp_path) as broker:
            settings = load_settings(
                topics={"backend": "kafka", "kafka_bootstrap": f"127.0.0.1:{broker.port}"}
            ).topics
            log = open_topic_log(settings)
            yield log
            log.close()
    else:
        require_service("nats")
        prefix = f"c{uuid.uuid4().hex[:10]}"
        settings = load_settings(topics={"backend": "nats", "nats_prefix": prefix}).topics
        log = open_topic_log(settings)
        yield log
        log.close()


def test_the_topic_sink_keeps_the_durable_sink_contract(topic_log: object) -> None:
    from hopper.pipeline.topics.sink import TopicSink

    sink = TopicSink(topic_log, "compliance", 2)  # type: ignore[arg-type]
    assert_durable_sink_compliance(sink, _groups(), dedups=False)
    consumer = topic_log.consumer("compliance", "check")  # type: ignore[attr-defined]
    try:
        seen: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(seen) < 64 and time.monotonic() < deadline:
            seen += [r.value for r in consumer.poll(100, 0.5)]
    finally:
        consumer.close()
    events, _ = decode_batch(make_batch(30))
    # Two commits of each group plus the writer's run: every event at least twice, raw.
    assert {e.raw for e in events} <= set(seen)
