"""The Channels contract, run against every backend (in-process and a real Redis).

Also the Publisher over both backends, and an edge app publishing and streaming through
Redis. Channel names are unique per test so parallel runs on one Redis do not collide.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from pathlib import Path

import anyio
import orjson
import pytest
import redis
from conftest import REDIS_URL, require_service
from starlette.testclient import TestClient

from hopper.client import make_event
from hopper.config import load_settings
from hopper.edge import create_app
from hopper.errors import BackendUnavailable
from hopper.events import decode_batch, encode_batch
from hopper.events.model import Event
from hopper.observe.metrics import HopperMetrics
from hopper.pubsub import Channels, ChannelSink, render_json, render_raw
from hopper.pubsub.memory import MemoryChannels
from hopper.testing import NOW_MS, FrozenClock, bearer, create_token, make_batch, page_view

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

PROTOBUF = {"content-type": "application/x-protobuf"}
DEADLINE_S = 10.0


def _name(kind: str) -> str:
    return f"hopper-test-{kind}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["memory", "redis"])
def channels(request: pytest.FixtureRequest) -> Iterator[Channels]:
    if request.param == "redis":
        require_service("redis")
        from hopper.pubsub.redis import RedisChannels

        backend: Channels = RedisChannels(REDIS_URL)
    else:
        backend = MemoryChannels()
    yield backend
    backend.close()


async def _take(subscription: AsyncGenerator[bytes, None], count: int) -> list[bytes]:
    """Read exactly ``count`` messages, failing if they do not come in time."""
    received: list[bytes] = []
    with anyio.fail_after(DEADLINE_S):
        while len(received) < count:
            received.append(await anext(subscription))
    return received


async def _publish(channels: Channels, channel: str, messages: Sequence[bytes]) -> None:
    # In production publish runs in the publisher thread, never in the event loop.
    await asyncio.to_thread(channels.publish, channel, messages)


def _subscriber_count(channels: Channels, channel: str) -> int:
    if isinstance(channels, MemoryChannels):
        return channels.subscriber_count(channel)
    with redis.Redis.from_url(REDIS_URL) as client:
        [(_, count)] = client.pubsub_numsub(channel)
        return int(count)


async def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# -- the Channels contract ---------------------------------------------------------------


async def test_subscriber_gets_each_message_published_after_subscribe_in_order(
    channels: Channels,
) -> None:
    channel = _name("order")
    subscription = await channels.subscribe(channel)
    # Binary and boundary-like bytes: one message per item, never merged or split.
    first = [b"\x00\x01", b"line\nbreak", b"\xff" * 300, b"x"]
    second = [f"m{i}".encode() for i in range(200)]
    await _publish(channels, channel, first)
    await _publish(channels, channel, second)
    assert await _take(subscription, len(first) + len(second)) == first + second
    await subscription.aclose()


async def test_ten_thousand_messages_in_one_publish_all_arrive(channels: Channels) -> None:
    channel = _name("bulk")
    subscription = await channels.subscribe(channel)
    messages = [i.to_bytes(4, "big") for i in range(10_000)]
    await _publish(channels, channel, messages)
    assert await _take(subscription, len(messages)) == messages
    await subscription.aclose()


async def test_two_subscribers_each_get_everything(channels: Channels) -> None:
    channel = _name("fanout")
    one = await channels.subscribe(channel)
    two = await channels.subscribe(channel)
    messages = [f"event-{i}".encode() for i in range(50)]
    await _publish(channels, channel, messages)
    assert await _take(one, 50) == messages
    assert await _take(two, 50) == messages
    await one.aclose()
    await two.aclose()


async def test_subscriber_of_another_channel_gets_nothing(channels: Channels) -> None:
    busy, quiet = _name("busy"), _name("quiet")
    listener = await channels.subscribe(quiet)
    await _publish(channels, busy, [b"not for you"] * 20)
    # Published after the others from the same thread: had any of them reached the
    # listener, it would come before this marker.
    await _publish(channels, quiet, [b"marker"])
    assert await _take(listener, 1) == [b"marker"]
    await listener.aclose()


def test_ping_answers(channels: Channels) -> None:
    assert channels.ping() is None  # no BackendUnavailable: see the next test for a dead one


def test_ping_of_an_unreachable_redis_raises() -> None:
    from hopper.pubsub.redis import RedisChannels

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once the socket is closed
    dead = RedisChannels(f"redis://127.0.0.1:{port}/0")
    try:
        with pytest.raises(BackendUnavailable, match="Redis unavailable"):
            dead.ping()
    finally:
        dead.close()


async def test_aclose_unsubscribes(channels: Channels) -> None:
    channel = _name("close")
    used = await channels.subscribe(channel)
    unread = await channels.subscribe(channel)  # closed without ever being read
    assert _subscriber_count(channels, channel) == 2
    await _publish(channels, channel, [b"one"])
    assert await _take(used, 1) == [b"one"]
    await used.aclose()
    await unread.aclose()
    await _wait_for(lambda: _subscriber_count(channels, channel) == 0)
    with pytest.raises(StopAsyncIteration):
        await anext(used)


# -- the Publisher over each backend --------------------------------------------------------


def _mixed_events() -> list[Event]:
    """Three page views and two flashcard reviews, decoded as the pipeline would."""
    flashcards = [
        make_event(
            "flashcard_reviewed",
            {"deck_id": "deck-1", "card_id": f"card-{n}", "grade": 3, "response_ms": 900},
            username="student0002",
            device_id="tablet-0002",
            app_time_ms=NOW_MS + n,
        )
        for n in range(2)
    ]
    batch = encode_batch([page_view(0), flashcards[0], page_view(1), flashcards[1], page_view(2)])
    events, rejections = decode_batch(batch)
    assert rejections == []
    return events


class Publisher:
    """Several channel sinks offered the same commits, as a topology's live sinks are."""

    def __init__(self, sinks: list[ChannelSink]) -> None:
        self.sinks = sinks

    def start(self) -> None:
        for sink in self.sinks:
            sink.start()

    def offer(self, events: list[Event], received_ms: int) -> None:
        for sink in self.sinks:
            sink.offer([(events, received_ms)])

    def stop(self) -> None:
        for sink in self.sinks:
            sink.stop()


async def test_channel_sinks_render_raw_protos_and_filtered_json(channels: Channels) -> None:
    protos, lp_all, lp_cards = _name("protos"), _name("lp-all"), _name("lp-cards")
    metrics = HopperMetrics()
    cards = frozenset({"flashcard_reviewed"})
    publisher = Publisher(
        [
            ChannelSink("protos", channels, protos, render_raw, metrics, message_format="protobuf"),
            ChannelSink(
                "lp-events", channels, lp_all, render_json(), metrics, message_format="json"
            ),
            ChannelSink(
                "lp-cards", channels, lp_cards, render_json(cards), metrics, message_format="json"
            ),
        ]
    )
    raw_sub = await channels.subscribe(protos)
    all_sub = await channels.subscribe(lp_all)
    cards_sub = await channels.subscribe(lp_cards)
    events = _mixed_events()
    publisher.start()
    try:
        publisher.offer(events, NOW_MS + 5)
        assert await _take(raw_sub, 5) == [e.raw for e in events]
        as_json = [orjson.loads(m) for m in await _take(all_sub, 5)]
        assert [m["hash"] for m in as_json] == [e.hash.hex() for e in events]
        assert {m["received_ms"] for m in as_json} == {NOW_MS + 5}
        assert as_json[0]["type"] == "page_viewed"
        assert as_json[0]["payload"]["book_id"] == "book-001"
        cards = [orjson.loads(m) for m in await _take(cards_sub, 2)]
        assert [c["payload"]["card_id"] for c in cards] == ["card-0", "card-1"]
        assert {c["type"] for c in cards} == {"flashcard_reviewed"}
        # Nothing else was on the filtered channel: the next message is the next offer's.
        publisher.offer(events[1:2], NOW_MS + 6)
        [following] = await _take(cards_sub, 1)
        assert orjson.loads(following)["received_ms"] == NOW_MS + 6
    finally:
        await asyncio.to_thread(publisher.stop)
        for sub in (raw_sub, all_sub, cards_sub):
            await sub.aclose()


async def test_a_channel_sink_drops_and_counts_when_its_buffer_is_full(channels: Channels) -> None:
    channel = _name("overflow")
    metrics = HopperMetrics()
    sink = ChannelSink(
        "protos", channels, channel, render_raw, metrics, message_format="protobuf", max_events=10
    )
    publisher = Publisher([sink])
    events, _ = decode_batch(make_batch(15))
    subscription = await channels.subscribe(channel)
    # The publishing thread is not started yet, so nothing drains the buffer: offers
    # beyond it must return at once and drop, never block the writer.
    publisher.offer(events[:8], NOW_MS)
    publisher.offer(events[8:13], NOW_MS)  # 8 + 5 > 10: dropped whole
    publisher.offer(events[13:15], NOW_MS)  # 8 + 2 = 10: fits
    dropped = metrics.registry.get_sample_value(
        "events_dropped_total", {"component": "protos", "reason": "buffer_full"}
    )
    assert dropped == 5
    publisher.start()
    try:
        kept = events[:8] + events[13:15]
        assert await _take(subscription, 10) == [e.raw for e in kept]
    finally:
        await asyncio.to_thread(publisher.stop)
        await subscription.aclose()
    sent = metrics.registry.get_sample_value("events_sent_total", {"component": "protos"})
    assert sent == 10


# -- an edge app on Redis channels ---------------------------------------------------------


@pytest.fixture
def redis_app(tmp_path: Path) -> Iterator[tuple[TestClient, str, str]]:
    require_service("redis")
    protos, lp_events = _name("app-protos"), _name("app-lp")
    settings = load_settings(
        store={"backend": "sqlite", "sqlite_path": tmp_path / "events.db"},
        pubsub={
            "backend": "redis",
            "redis_url": REDIS_URL,
            "protos_channel": protos,
            "lp_events_channel": lp_events,
        },
    )
    app = create_app(settings, clock=FrozenClock(NOW_MS), run_jobs=False)
    token = create_token(settings.store, "ingest", "stream")
    with TestClient(app, headers=bearer(token)) as client:
        yield client, protos, lp_events


def _redis_messages(pubsub: redis.client.PubSub, count: int) -> list[bytes]:
    received: list[bytes] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(received) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(received)} of {count} messages arrived"
        message = pubsub.get_message(timeout=remaining)
        if message is not None and message["type"] == "message":
            received.append(message["data"])
    return received


@pytest.mark.timeout(60)
def test_app_publishes_each_accepted_event_to_redis(
    redis_app: tuple[TestClient, str, str],
) -> None:
    client, protos, lp_events = redis_app
    batch = make_batch(25)
    expected, _ = decode_batch(batch)
    with redis.Redis.from_url(REDIS_URL) as direct, direct.pubsub() as pubsub:
        pubsub.subscribe(protos, lp_events)
        confirmed = 0
        while confirmed < 2:  # both SUBSCRIBEs are in place before anything is published
            reply = pubsub.get_message(timeout=DEADLINE_S)
            assert reply is not None
            confirmed += reply["type"] == "subscribe"
        response = client.post("/v1/events", content=batch, headers=PROTOBUF)
        assert response.json()["accepted"] == 25
        messages = _redis_messages(pubsub, 50)
    raw = [m for m in messages if not m.startswith(b"{")]
    assert raw == [e.raw for e in expected]  # raw protobuf, one message per event
    json_hashes = [orjson.loads(m)["hash"] for m in messages if m.startswith(b"{")]
    assert json_hashes == [e.hash.hex() for e in expected]


@pytest.mark.timeout(60)
def test_stream_endpoint_relays_from_redis(redis_app: tuple[TestClient, str, str]) -> None:
    client, protos, lp_events = redis_app
    batch = make_batch(10)
    expected, _ = decode_batch(batch)
    with (
        client.websocket_connect(f"/v1/stream/{protos}") as raw_ws,
        client.websocket_connect(f"/v1/stream/{lp_events}") as json_ws,
    ):
        assert orjson.loads(raw_ws.receive_text()) == {"subscribed": protos}
        assert orjson.loads(json_ws.receive_text()) == {"subscribed": lp_events}
        assert client.post("/v1/events", content=batch, headers=PROTOBUF).status_code == 200
        assert [raw_ws.receive_bytes() for _ in expected] == [e.raw for e in expected]
        as_json = [orjson.loads(json_ws.receive_text()) for _ in expected]
        assert [m["hash"] for m in as_json] == [e.hash.hex() for e in expected]
