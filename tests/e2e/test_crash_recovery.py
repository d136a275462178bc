"""Crash recovery: SIGKILL the server while clients stream; nothing acked is lost or doubled.

`hopper serve` runs as a real subprocess with the WebSocket and MQTT sources. A WebSocket
client streams pipelined batches and, after each lost connection, resends every batch not
acknowledged; an MQTT client publishes QoS 1 batches to Mosquitto, which stays up and keeps
what Hopper did not PUBACK in Hopper's persistent session. Meanwhile the server is killed
with SIGKILL at random moments and restarted on the same port, store and MQTT client id.
At the end every event sent is in ``raw_events`` and ``reader_events`` exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import signal
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from conftest import MQTT_HOST, MQTT_PORT, require_service
from paho.mqtt.enums import CallbackAPIVersion
from support.processes import HopperProcess, free_port, write_config
from websockets.exceptions import WebSocketException

from hopper.client import MqttSender, WebSocketSender, encode_batch
from hopper.config import load_settings
from hopper.events import content_hash
from hopper.testing import create_token, page_view

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

logger = logging.getLogger(__name__)

BEAT_S = 0.2  # both clients send a burst on every beat
WS_BATCH_EVENTS = 25
WS_BURST_BATCHES = 8  # pipelined: several frames in flight when a kill lands
MQTT_BATCH_EVENTS = 10
# 40 messages/s: a restart's backlog stays far below Mosquitto's per-session queue limit
# (max_queued_messages, 1000 by default), beyond which the broker drops QoS 1 messages.
MQTT_BURST_BATCHES = 8
KILLS = (3, 5)
KILL_INTERVAL_S = (2.0, 5.0)
# A kill lands this long after a beat: before, during or after the burst's commit and acks.
KILL_JITTER_S = (0.0, 0.01)
DOWNTIME_S = (0.0, 0.8)
TAIL_S = 2.0  # traffic after the last restart
DRAIN_TIMEOUT_S = 20.0


class EventSource:
    """Distinct valid events for one transport, and the hash of each one sent."""

    def __init__(self, name: str, batch_events: int, base_ms: int) -> None:
        self.name = name
        self.batch_events = batch_events
        self.base_ms = base_ms
        self.batches: list[bytes] = []
        self.hashes: list[bytes] = []

    def new_batch(self) -> int:
        """Build the next batch; return its id (its index in ``batches``)."""
        start = len(self.hashes)
        raws = [
            page_view(
                n,
                # Real time, as the server validates against its system clock.
                app_time_ms=self.base_ms + n,
                username=f"crash-{self.name}",
                device_id=f"tablet-{self.name}",
            ).SerializeToString()
            for n in range(start, start + self.batch_events)
        ]
        self.hashes += [content_hash(raw) for raw in raws]
        self.batches.append(encode_batch(raws))
        return len(self.batches) - 1


class Beat:
    """A shared rhythm: clients send on each beat, and a kill can follow one closely."""

    def __init__(self) -> None:
        self._next = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Beat every BEAT_S until ``stop``, then release every waiter."""
        while not stop.is_set():
            beat, self._next = self._next, asyncio.Event()
            beat.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), BEAT_S)
        self._next.set()

    async def wait(self) -> None:
        """Wait for the next beat."""
        await self._next.wait()


@dataclass
class WebSocketStream:
    """Streams batches over WebSocket; after a lost connection resends what is unacked."""

    url: str
    events: EventSource
    beat: Beat
    token: str
    acked: set[int] = field(default_factory=set)
    sends: Counter[int] = field(default_factory=Counter)
    connections: int = 0
    accepted: int = 0
    duplicates: int = 0
    problems: list[str] = field(default_factory=list)
    _retry: list[int] = field(default_factory=list)
    _progress: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def all_acked(self) -> bool:
        """Tell whether every batch built so far was acknowledged."""
        return len(self.acked) == len(self.events.batches)

    @property
    def resent(self) -> int:
        """Return how many frames were sends of an already-sent batch."""
        return sum(n - 1 for n in self.sends.values())

    async def run(self, stop: asyncio.Event) -> None:
        """Stream until ``stop``, then until every batch is acked (reconnecting as needed)."""
        delay = 0.05
        while not (stop.is_set() and self.all_acked):
            try:
                sender = WebSocketSender(self.url, token=self.token)
                ws = await asyncio.wait_for(sender.__aenter__(), 5.0)
            except (OSError, TimeoutError, EOFError, WebSocketException):
                await asyncio.sleep(delay)  # the server is down or restarting
                delay = min(delay * 2, 0.5)
                continue
            self.connections += 1
            acked_before = len(self.acked)
            try:
                await self._session(ws, stop)
            except (ConnectionError, WebSocketException):
                pass  # killed: the next connection resends what was not acked
            finally:
                await ws.close()
            if len(self.acked) > acked_before:
                delay = 0.05
            else:  # a connection that achieved nothing: do not spin on a broken server
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def _session(self, ws: WebSocketSender, stop: asyncio.Event) -> None:
        inflight: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        tasks = {
            asyncio.create_task(self._pump(ws, inflight, stop)),
            asyncio.create_task(self._collect(ws, inflight)),
        }
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        errors = [e for e in (task.exception() for task in done) if e is not None]
        if errors:
            raise errors[0]  # the pump and the collector usually fail together

    async def _send(
        self, ws: WebSocketSender, inflight: asyncio.Queue[tuple[int, int]], batch: int
    ) -> None:
        seq = await ws.send(self.events.batches[batch])
        self.sends[batch] += 1
        inflight.put_nowait((seq, batch))  # seqs restart per connection: map them back

    async def _pump(
        self, ws: WebSocketSender, inflight: asyncio.Queue[tuple[int, int]], stop: asyncio.Event
    ) -> None:
        self._retry.clear()
        unacked = [b for b in range(len(self.events.batches)) if b not in self.acked]
        for batch in unacked:
            await self._send(ws, inflight, batch)
        while not stop.is_set():
            while self._retry:
                await self._send(ws, inflight, self._retry.pop(0))
            await self.beat.wait()
            if stop.is_set():
                break
            for _ in range(WS_BURST_BATCHES):
                await self._send(ws, inflight, self.events.new_batch())
        while not self.all_acked:
            while self._retry:
                await self._send(ws, inflight, self._retry.pop(0))
            self._progress.clear()
            await self._progress.wait()

    async def _collect(self, ws: WebSocketSender, inflight: asyncio.Queue[tuple[int, int]]) -> None:
        while True:
            seq, batch = await inflight.get()
            self._record(batch, await ws.wait(seq))
            self._progress.set()

    def _record(self, batch: int, ack: dict[str, Any]) -> None:
        if ack.get("error"):
            self._retry.append(batch)  # not committed (store trouble): send it again
            return
        if ack["rejected"] or ack["accepted"] + ack["duplicates"] != self.events.batch_events:
            self.problems.append(f"batch {batch}: unexpected ack {ack}")
        self.acked.add(batch)
        self.accepted += ack["accepted"]
        self.duplicates += ack["duplicates"]


class MqttStream:
    """Publishes batches with QoS 1; the broker's PUBACK is the acknowledgement."""

    def __init__(self, sender: MqttSender, events: EventSource, beat: Beat) -> None:
        self.sender = sender
        self.events = events
        self.beat = beat
        self.infos: list[Any] = []

    async def run(self, stop: asyncio.Event) -> None:
        """Publish a burst on every beat until ``stop``."""
        while True:
            await self.beat.wait()
            if stop.is_set():
                return
            for _ in range(MQTT_BURST_BATCHES):
                batch = self.events.batches[self.events.new_batch()]
                self.infos.append(self.sender.publish(batch))

    def wait_broker_acks(self, timeout: float) -> list[int]:
        """Wait for the broker's PUBACKs; return the batches it did not acknowledge."""
        deadline = time.monotonic() + timeout
        for info in self.infos:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        return [b for b, info in enumerate(self.infos) if not info.is_published()]


@dataclass
class MqttTally:
    """Events the MQTT source received and stored, summed over the server's lives."""

    received: int = 0
    stored: int = 0

    def scrape(self, server: HopperProcess, token: str) -> None:
        """Add this server life's counters (best effort: only reported, never asserted)."""
        try:
            headers = {"authorization": f"Bearer {token}"}
            text = httpx.get(f"{server.base_url}/metrics", timeout=1.0, headers=headers).text
        except httpx.HTTPError:
            return
        for name, attr in (("received", "received"), ("sent", "stored")):
            found = re.search(rf'^events_{name}_total{{component="mqtt"}} (\S+)$', text, re.M)
            if found:
                setattr(self, attr, getattr(self, attr) + int(float(found[1])))


async def _kill_at_random(
    server: HopperProcess,
    beat: Beat,
    ws: WebSocketStream,
    tally: MqttTally,
    rng: random.Random,
    kills: int,
) -> list[int]:
    """Kill and restart the server ``kills`` times; return the WebSocket's unacked at each."""
    unacked = []
    for _ in range(kills):
        await asyncio.sleep(rng.uniform(*KILL_INTERVAL_S))
        await asyncio.to_thread(tally.scrape, server, ws.token)
        await beat.wait()
        await asyncio.sleep(rng.uniform(*KILL_JITTER_S))
        server.kill()
        unacked.append(len(ws.events.batches) - len(ws.acked))
        await asyncio.sleep(rng.uniform(*DOWNTIME_S))
        await asyncio.to_thread(server.start)
    await asyncio.sleep(TAIL_S)
    return unacked


def _hash_counts(db: Path, table: str) -> Counter[bytes]:
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        rows = conn.execute(f"SELECT hash FROM {table}")  # noqa: S608 - a constant
        return Counter(bytes(h) for (h,) in rows)


def _stored_of(db: Path, events: EventSource) -> set[bytes]:
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        rows = conn.execute(
            "SELECT hash FROM reader_events WHERE username = ?", (f"crash-{events.name}",)
        )
        return {bytes(h) for (h,) in rows}


def _wait_stored(db: Path, events: EventSource, timeout: float) -> None:
    """Poll the store until every event of ``events`` is in it (or time runs out)."""
    wanted = set(events.hashes)
    deadline = time.monotonic() + timeout
    while not wanted <= _stored_of(db, events) and time.monotonic() < deadline:
        time.sleep(0.1)  # the final check says what is missing, if anything


def _exactly_once(table: str, stored: Counter[bytes], expected: set[bytes]) -> list[str]:
    problems = []
    doubled = sum(1 for n in stored.values() if n > 1)
    missing = len(expected - stored.keys())
    unexpected = len(stored.keys() - expected)
    if doubled:
        problems.append(f"{table}: {doubled} events stored more than once")
    if missing:
        problems.append(f"{table}: {missing} of {len(expected)} sent events missing")
    if unexpected:
        problems.append(f"{table}: {unexpected} rows that were never sent")
    return problems


@contextlib.contextmanager
def _mqtt_client(client_id: str, *, clean_session: bool) -> Iterator[mqtt.Client]:
    """Connect (waiting for the CONNACK), yield the client, disconnect."""
    connected = threading.Event()
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
    )
    client.on_connect = lambda *args: connected.set()
    client.connect(MQTT_HOST, MQTT_PORT)
    client.loop_start()
    try:
        assert connected.wait(10), "no CONNACK from the broker"
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def hopper_session() -> Iterator[tuple[str, str]]:
    """Hopper's MQTT client id and topic filter, with its persistent session made up front.

    The broker queues for the session from the first publish on, so no message can slip
    by before the server's first SUBSCRIBE; the session is removed afterwards.
    """
    require_service("mosquitto")
    run = uuid.uuid4().hex[:12]
    client_id, topic = f"hopper-crash-{run}", f"hopper-crash-{run}/+/events"
    subscribed = threading.Event()
    with _mqtt_client(client_id, clean_session=False) as client:
        client.on_subscribe = lambda *args: subscribed.set()
        client.subscribe(topic, qos=1)
        assert subscribed.wait(10), "no SUBACK from the broker"
    yield client_id, topic
    with _mqtt_client(client_id, clean_session=True):
        pass  # a clean connect drops the session and what it still holds


@pytest.mark.timeout(150)
def test_acknowledged_events_are_stored_exactly_once_across_sigkills(
    tmp_path: Path, hopper_session: tuple[str, str]
) -> None:
    client_id, topic = hopper_session
    seed = int(os.environ.get("HOPPER_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    kills = rng.randint(*KILLS)
    db = tmp_path / "events.db"
    port = free_port()
    config = write_config(
        tmp_path / "hopper.toml",
        {
            "server": {"host": "127.0.0.1", "port": port},
            "store": {"backend": "sqlite", "sqlite_path": db},
            "pipeline.edge": {"sources": ["http", "websocket", "mqtt"]},
            "mqtt": {"host": MQTT_HOST, "port": MQTT_PORT, "topic": topic, "client_id": client_id},
            "log": {"level": "WARNING"},
        },
    )
    server = HopperProcess(config, port, tmp_path / "hopper.log")
    # Auth on, as by default: the devices and the metrics scrape use a token.
    token = create_token(
        load_settings(store={"sqlite_path": db}).store, "ingest", "metrics", name="crash"
    )
    base_ms = time.time_ns() // 1_000_000
    beat = Beat()
    ws = WebSocketStream(
        f"{server.ws_url}/v1/events/ws", EventSource("ws", WS_BATCH_EVENTS, base_ms), beat, token
    )
    publisher = MqttSender(
        MQTT_HOST, MQTT_PORT, topic=topic.replace("+", "tablet-1"), client_id=f"{client_id}-pub"
    )
    mqtt_stream = MqttStream(publisher, EventSource("mqtt", MQTT_BATCH_EVENTS, base_ms), beat)
    tally = MqttTally()
    context = f"seed {seed} (rerun with HOPPER_CRASH_SEED={seed})"

    async def scenario() -> list[int]:
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(beat.run(stop)),
            asyncio.create_task(ws.run(stop)),
            asyncio.create_task(mqtt_stream.run(stop)),
        ]
        try:
            unacked = await _kill_at_random(server, beat, ws, tally, rng, kills)
        finally:
            stop.set()
        # Only the WebSocket stream waits for acks (with resends): bound it.
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), DRAIN_TIMEOUT_S)
        except TimeoutError:
            missing = len(ws.events.batches) - len(ws.acked)
            raise AssertionError(
                f"{missing} WebSocket batches not acked {DRAIN_TIMEOUT_S} s after the last "
                f"restart; {context}"
            ) from None
        return unacked

    with server.log_on_failure():
        try:
            server.start()
            started = time.monotonic()
            unacked_at_kills = asyncio.run(scenario())
            not_acked_by_broker = mqtt_stream.wait_broker_acks(DRAIN_TIMEOUT_S)
            _wait_stored(db, mqtt_stream.events, DRAIN_TIMEOUT_S)
            tally.scrape(server, ws.token)
            exit_code = server.stop()
        finally:
            publisher.close()
            server.close()
        logger.info(
            "%s: %d kills in %.1f s. WebSocket: %d events in %d batches over %d connections, "
            "unacked batches at each kill %s, %d batches resent, %d duplicate events absorbed. "
            "MQTT: %d events in %d messages, Hopper received %d events and stored %d over "
            "its lives.",
            context,
            server.kills,
            time.monotonic() - started,
            len(ws.events.hashes),
            len(ws.events.batches),
            ws.connections,
            unacked_at_kills,
            ws.resent,
            ws.duplicates,
            len(mqtt_stream.events.hashes),
            len(mqtt_stream.events.batches),
            tally.received,
            tally.stored,
        )

        assert server.kills == kills, context
        # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
        assert exit_code in (0, -signal.SIGTERM), f"graceful stop exited {exit_code}; {context}"
        assert not ws.problems, f"{ws.problems[:5]}; {context}"
        assert ws.all_acked, context
        assert len(ws.events.hashes) > 1000, f"the WebSocket stream barely ran; {context}"
        assert ws.accepted + ws.duplicates == len(ws.events.hashes), context
        assert not not_acked_by_broker, f"broker never acked {not_acked_by_broker}; {context}"
        expected = set(ws.events.hashes) | set(mqtt_stream.events.hashes)
        assert len(expected) == len(ws.events.hashes) + len(mqtt_stream.events.hashes)
        problems = _exactly_once("raw_events", _hash_counts(db, "raw_events"), expected)
        problems += _exactly_once("reader_events", _hash_counts(db, "reader_events"), expected)
        assert not problems, f"{problems}; {context}"
        with contextlib.closing(sqlite3.connect(db)) as conn:
            errors = conn.execute("SELECT reason, detail FROM reader_events_errors").fetchall()
        assert errors == [], f"{errors[:5]}; {context}"
