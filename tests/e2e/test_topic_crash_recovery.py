"""Edge → topic → two workers → PostgreSQL, with SIGKILLs: every acked event stored once.

Devices stream into an edge node that stores each event and forwards it to the topic
`edge-events`; two `hopper worker central` processes consume the topic into a central
PostgreSQL store. The edge node and a worker are SIGKILLed at moments chosen at random
(seeded; the seed is in the failure message) and restarted. At the end every event
acknowledged to a device is in the edge store and in the central store exactly once, on
each topic backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import require_service
from support.processes import HopperProcess, WorkerProcess, free_port, write_config
from websockets.exceptions import WebSocketException

from hopper.client import WebSocketSender, is_busy
from hopper.config import load_settings
from hopper.testing import create_token, make_batch

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]
logger = logging.getLogger(__name__)

BATCH_EVENTS = 50
STREAM_SECS = 12.0
DRAIN_SECS = 90.0


@pytest.fixture(params=["sqlite", "kafka", "nats"])
def topics(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The [topics] section of both processes, on a backend of this test's own."""
    if request.param == "sqlite":
        yield {"backend": "sqlite", "sqlite_path": tmp_path / "topics.db", "partitions": 4}
    elif request.param == "kafka":
        from support.servers import tansu

        with tansu(tmp_path) as broker:
            yield {
                "backend": "kafka",
                "kafka_bootstrap": f"127.0.0.1:{broker.port}",
                "partitions": 4,
            }
    else:
        require_service("nats")
        yield {"backend": "nats", "nats_prefix": f"t{uuid.uuid4().hex[:10]}", "partitions": 4}


class Devices:
    """Streams batches over WebSocket; after a lost connection resends what is unacked."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.batches: list[bytes] = []
        self.acked: set[int] = set()
        self.next_event = 0
        self.connections = 0

    def new_batch(self) -> int:
        start = self.next_event
        self.next_event += BATCH_EVENTS
        # Keep app times inside the clock window whatever the count (make_batch adds n).
        now = time.time_ns() // 1_000_000 - start
        self.batches.append(make_batch(BATCH_EVENTS, start=start, app_time_ms=now))
        return len(self.batches) - 1

    @property
    def hashes(self) -> list[bytes]:
        from hopper.events import decode_batch

        return [e.hash for b in sorted(self.acked) for e in decode_batch(self.batches[b])[0]]

    async def run(self, stop: asyncio.Event) -> None:
        """Stream until ``stop``, then until every batch is acked."""
        while not (stop.is_set() and len(self.acked) == len(self.batches)):
            try:
                sender = WebSocketSender(self.url, token=self.token, max_in_flight=8)
                ws = await asyncio.wait_for(sender.__aenter__(), 5.0)
            except (OSError, TimeoutError, EOFError, WebSocketException):
                await asyncio.sleep(0.2)  # the edge node is down or restarting
                continue
            self.connections += 1
            try:
                await self._session(ws, stop)
            except (ConnectionError, WebSocketException, OSError):
                pass  # killed: the next connection resends what was not acked
            finally:
                with contextlib.suppress(Exception):
                    await ws.close()

    async def _session(self, ws: WebSocketSender, stop: asyncio.Event) -> None:
        pending = [b for b in range(len(self.batches)) if b not in self.acked]
        while True:
            if not pending:
                if stop.is_set():
                    return
                pending = [self.new_batch() for _ in range(4)]
                await asyncio.sleep(0.02)
            sent = [(b, await ws.send(self.batches[b])) for b in pending]
            pending = []
            for batch, seq in sent:
                ack = await ws.wait(seq)
                if ack.get("error") or is_busy(ack):
                    pending.append(batch)  # not stored: send it again
                else:
                    assert ack["accepted"] + ack["duplicates"] == BATCH_EVENTS, ack
                    self.acked.add(batch)


def _edge_hashes(db: Path) -> dict[bytes, int]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT hash, count(*) FROM reader_events GROUP BY hash").fetchall()
    return {bytes(h): n for h, n in rows}


def _central_hashes(url: str, table: str) -> dict[bytes, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(f"SELECT hash, count(*) FROM {table} GROUP BY hash").fetchall()  # noqa: S608
    return {bytes(h): n for h, n in rows}


def test_acked_events_reach_the_central_store_exactly_once_across_sigkills(
    tmp_path: Path, topics: dict[str, Any], postgres_url: str
) -> None:
    seed = int(os.environ.get("HOPPER_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    context = f"seed {seed} (rerun with HOPPER_CRASH_SEED={seed}), topics {topics['backend']}"
    edge_db = tmp_path / "edge.db"
    port = free_port()
    common = {"topics": {**topics, "external": ["edge-events"]}}
    edge_config = write_config(
        tmp_path / "edge.toml",
        {
            "server": {"host": "127.0.0.1", "port": port},
            "store": {"sqlite_path": edge_db},
            "pipeline.edge": {"sinks": ["store", "topic:edge-events"]},
            "log": {"level": "WARNING"},
            **common,
        },
    )
    central_config = write_config(
        tmp_path / "central.toml",
        {
            "store": {"backend": "postgres", "postgres_url": postgres_url},
            "pipeline.central": {
                "sources": ["topic:edge-events"],
                "stages": ["decode", "validate", "dedup"],
                "sinks": ["store"],
            },
            "log": {"level": "INFO"},
            **common,
        },
    )
    token = create_token(load_settings(store={"sqlite_path": edge_db}).store, "ingest")
    edge = HopperProcess(edge_config, port, tmp_path / "edge.log")
    workers = [
        WorkerProcess(central_config, "central", tmp_path / f"worker-{n}.log") for n in (1, 2)
    ]
    devices = Devices(f"{edge.ws_url}/v1/events/ws", token)

    async def scenario() -> None:
        stop = asyncio.Event()
        streaming = asyncio.create_task(devices.run(stop))
        started = time.monotonic()
        # Two kills of each kind, at random moments of the stream.
        moments = sorted((rng.uniform(1.0, STREAM_SECS - 1.0), kind) for kind in "EEWW")
        for at, kind in moments:
            await asyncio.sleep(max(0.0, at - (time.monotonic() - started)))
            victim = edge if kind == "E" else rng.choice(workers)
            await asyncio.to_thread(victim.kill)
            await asyncio.sleep(rng.uniform(0.1, 1.0))
            await asyncio.to_thread(victim.start, 60.0)
        await asyncio.sleep(max(0.0, STREAM_SECS - (time.monotonic() - started)))
        stop.set()
        await asyncio.wait_for(streaming, DRAIN_SECS)

    processes = [edge, *workers]
    try:
        with contextlib.ExitStack() as logs:
            for process in processes:
                logs.enter_context(process.log_on_failure())
            edge.start()
            for worker in workers:
                worker.start(60.0)
            asyncio.run(scenario())
            expected = devices.hashes
            assert len(expected) == len(set(expected)) == len(devices.acked) * BATCH_EVENTS
            assert len(expected) > 2000, f"the devices barely streamed; {context}"
            deadline = time.monotonic() + DRAIN_SECS
            while len(_central_hashes(postgres_url, "raw_events")) < len(expected):
                assert time.monotonic() < deadline, (
                    f"{len(_central_hashes(postgres_url, 'raw_events'))} of {len(expected)} "
                    f"events reached the central store; {context}"
                )
                time.sleep(0.5)
            for process in processes:
                process.stop()
    finally:
        for process in processes:
            process.close()
    wanted = set(expected)
    for name, counts in (
        ("edge reader_events", _edge_hashes(edge_db)),
        ("central raw_events", _central_hashes(postgres_url, "raw_events")),
        ("central reader_events", _central_hashes(postgres_url, "reader_events")),
    ):
        missing = wanted - set(counts)
        repeated = [h for h, n in counts.items() if n > 1]
        assert not missing, f"{name}: {len(missing)} acknowledged events missing; {context}"
        assert not repeated, f"{name}: {len(repeated)} events stored twice; {context}"
    logger.info(
        "%s: %d kills of the edge, %d of workers; %d events acked in %d batches over %d "
        "connections; all in both stores once.",
        context,
        edge.kills,
        sum(w.kills for w in workers),
        len(expected),
        len(devices.acked),
        devices.connections,
    )
