"""Benchmark phases: WebSocket and MQTT load, as fast as acks allow or paced; their summaries."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import seed
from harness import BATCH_EVENTS, Batches, CommitWatcher, percentiles

from hopper.client import MqttSender, WebSocketSender

# -- phases ----------------------------------------------------------------------------


@dataclass
class Phase:
    """What one phase sent, when, and when each batch was acknowledged."""

    name: str
    transport: str
    started: float
    stopped: float  # when sending stopped (end of the measured window)
    sent_at: list[float]  # per batch sent: send time (paced phases: the scheduled time)
    acked_at: list[float]  # per batch: ack / commit time, 0.0 if never seen
    accepted: int = 0
    anomalies: Counter[str] = field(default_factory=Counter)
    exhausted: bool = False
    target_rate: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    writer: dict[str, float] = field(default_factory=dict)
    fsync_ms: dict[str, float] | None = None
    profile: dict[str, Any] | None = None

    def summary(self, warmup: float) -> dict[str, Any]:
        sent = len(self.sent_at)
        acked = [t for t in self.acked_at if t]
        window_start = self.started + warmup
        end = self.stopped
        if self.exhausted and acked:
            end = min(end, max(acked))
        in_window = sum(1 for t in acked if window_start <= t <= end)
        seconds = max(end - window_start, 1e-9)
        latencies = sorted(
            1000 * (a - s) for s, a in zip(self.sent_at, self.acked_at, strict=True) if a
        )
        per_second = Counter(int(t - self.started) for t in acked)
        return {
            "phase": self.name,
            "transport": self.transport,
            "target_events_per_s": None if self.target_rate is None else round(self.target_rate),
            "batches_sent": sent,
            "batches_acked": len(acked),
            "events_accepted": self.accepted,
            "measured_seconds": round(seconds, 3),
            "warmup_seconds": warmup,
            "events_per_s": round(in_window * BATCH_EVENTS / seconds),
            "events_per_s_by_second": [
                per_second[s] * BATCH_EVENTS for s in range(int(self.stopped - self.started) + 1)
            ],
            "latency_ms": percentiles(latencies),
            "ran_out_of_batches": self.exhausted,
            "anomalies": dict(self.anomalies),
            "cpu_pct": self.cpu,
            "writer": self.writer,
            "fsync_ms": self.fsync_ms,
            "profile": self.profile,
        }


async def websocket_phase(
    name: str,
    url: str,
    batches: Batches,
    *,
    duration: float,
    connections: int,
    window: int,
    rate: float | None = None,
    token: str | None = None,
) -> Phase:
    """Send batches over WebSocket connections: as fast as acks allow, or paced at ``rate``."""
    n = len(batches)
    sent_at: list[float] = []
    acked_at = [0.0] * n
    phase = Phase(name, "websocket", 0.0, 0.0, sent_at, acked_at, target_rate=rate)
    async with contextlib.AsyncExitStack() as stack:
        senders = [
            await stack.enter_async_context(
                WebSocketSender(url, token=token, max_in_flight=window if rate is None else 100_000)
            )
            for _ in range(connections)
        ]
        queues: list[asyncio.Queue[tuple[int, int] | None]] = [
            asyncio.Queue() for _ in range(connections)
        ]

        async def collect(
            ws: WebSocketSender, queue: asyncio.Queue[tuple[int, int] | None]
        ) -> None:
            while (item := await queue.get()) is not None:
                i, seq = item
                try:
                    ack = await ws.wait(seq)
                except ConnectionError as exc:
                    phase.anomalies[f"connection lost: {exc}"[:80]] += 1
                    continue
                acked_at[i] = time.perf_counter()
                phase.accepted += ack["accepted"]
                for key in ("duplicates", "rejected"):
                    if ack[key]:
                        phase.anomalies[key] += ack[key]
                if "error" in ack:
                    phase.anomalies[ack["error"]] += 1

        collectors = [
            asyncio.create_task(collect(s, q)) for s, q in zip(senders, queues, strict=True)
        ]
        start = time.perf_counter()
        stop_at = start + duration
        phase.started = start
        next_index = 0

        async def pump(c: int) -> None:
            # As fast as the window allows: each connection takes the next batch in turn.
            nonlocal next_index
            ws, queue = senders[c], queues[c]
            while next_index < n and time.perf_counter() < stop_at:
                i = next_index
                next_index += 1
                sent_at.append(0.0)  # keeps sent_at indexed like the batches
                seq = await ws.send(batches.payloads[i])
                sent_at[i] = time.perf_counter()
                queue.put_nowait((i, seq))

        async def paced() -> None:
            assert rate is not None
            interval = BATCH_EVENTS / rate
            for i in range(n):
                due = start + i * interval
                if due >= stop_at:
                    return
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                # Latency counts from the scheduled time: a late sender does not hide delay.
                sent_at.append(due)
                c = i % connections
                seq = await senders[c].send(batches.payloads[i])
                queues[c].put_nowait((i, seq))

        sending = (
            asyncio.gather(*(pump(c) for c in range(connections))) if rate is None else paced()
        )
        try:
            # Bounded even if the server stops acknowledging (a full window blocks send).
            await asyncio.wait_for(sending, timeout=duration + 60)
        except TimeoutError:
            phase.anomalies["sending stuck 60 s after the phase"] += 1
        phase.stopped = min(time.perf_counter(), stop_at)
        phase.exhausted = len(sent_at) >= n and time.perf_counter() < stop_at
        for queue in queues:
            queue.put_nowait(None)
        try:
            await asyncio.wait_for(asyncio.gather(*collectors), timeout=60)
        except TimeoutError:
            phase.anomalies["acks missing after 60 s"] += 1
            for task in collectors:
                task.cancel()
    del acked_at[len(sent_at) :]
    return phase


def mqtt_phase(
    name: str,
    sender: MqttSender,
    watcher: CommitWatcher,
    batches: Batches,
    *,
    duration: float,
    window: int,
    rate: float | None = None,
    token: str | None = None,
) -> Phase:
    """Publish batches with QoS 1: as fast as commits allow (a window), or paced at ``rate``."""
    n = len(batches)
    watcher.track(batches.last_ms)
    sent_at: list[float] = []
    phase = Phase(name, "mqtt", 0.0, 0.0, sent_at, [], target_rate=rate)
    start = time.perf_counter()
    stop_at = start + duration
    phase.started = start
    interval = None if rate is None else BATCH_EVENTS / rate
    i = 0
    while i < n:
        now = time.perf_counter()
        if now >= stop_at:
            break
        if interval is None:
            # Published but not committed yet: bounded, below the broker's queue limit
            # (max_queued_messages, 1000 by default) for Hopper's session.
            if i - watcher.committed >= window:
                if watcher.error is not None:
                    raise RuntimeError(f"commit watcher failed: {watcher.error!r}")
                time.sleep(0.0005)
                continue
            when = now
        else:
            when = start + i * interval
            if when >= stop_at:
                break
            if when > now:
                time.sleep(when - now)
        info = sender.publish(batches.payloads[i])
        if info.rc != 0:
            phase.anomalies[f"publish rc {info.rc}"] += 1
        sent_at.append(when)
        i += 1
    phase.stopped = min(time.perf_counter(), stop_at)
    phase.exhausted = i >= n and time.perf_counter() < stop_at
    if not watcher.wait_for(i, timeout=60):
        phase.anomalies["batches not committed 60 s after the phase"] += i - watcher.committed
    phase.acked_at = watcher.seen_at[:i]
    phase.accepted = sum(1 for t in phase.acked_at if t) * BATCH_EVENTS
    return phase


def count_stored(kind: str, target: str, first_ms: int, last_ms: int) -> int:
    """Count raw_events rows in an app-time range (the events a phase sent)."""
    sql = "SELECT count(*) FROM raw_events WHERE app_time_ms BETWEEN {0} AND {0}"
    if kind == "sqlite":
        conn = sqlite3.connect(target)
        try:
            return int(conn.execute(sql.format("?"), (first_ms, last_ms)).fetchone()[0])
        finally:
            conn.close()
    with seed.pg_connect(target) as pg:
        return int(pg.execute(sql.format("%s"), (first_ms, last_ms)).fetchone()[0])


class IngestProcess:
    """A paced WebSocket ingest phase in its own process, so its client work does not
    delay (and thereby inflate) the latencies another phase measures in this one."""

    def __init__(
        self, url: str, batches: Batches, *, duration: float, rate: float, token: str | None
    ) -> None:
        import multiprocessing

        context = multiprocessing.get_context("fork")  # the batches pass by fork, unpickled
        self._results: Any = context.Queue()

        def run() -> None:
            phase = asyncio.run(
                websocket_phase(
                    "ingest", url, batches, duration=duration, connections=1, window=32,
                    rate=rate, token=token,
                )
            )  # fmt: skip
            self._results.put(phase.summary(1.0))

        self._process = context.Process(target=run, name="bench-ingest", daemon=True)
        self._process.start()

    def result(self, timeout: float) -> dict[str, Any]:
        """The phase's summary (``events_per_s`` ...), once it has finished."""
        summary: dict[str, Any] = self._results.get(timeout=timeout)
        self._process.join(10)
        return summary
