"""End-to-end ingest benchmark: events/s and ack latency beside the machine's ceilings.

For each store (SQLite, PostgreSQL) and transport (WebSocket, MQTT), with N events already
stored (``seed.py``), ``hopper serve`` runs as a subprocess (its own GIL) and this process
sends pre-built 100-event batches of new, unique events:

1. throughput: as fast as acknowledgements allow (a window of batches in flight);
2. latency: paced at half the measured maximum; ack latency p50/p99.

In the same run, before the server starts, the ceilings of the same machine are measured
on the same kind of rows: protobuf parse rate (``decode_batch``, one core), the edge stages
(decode + validate + dedup), the raw insert rate of the rows into the same store kind at the
same size (SQLite ``executemany``, PostgreSQL ``COPY``) and Hopper's ``EventStore.commit``.
See bench/README.md for the definitions.

    .venv/bin/python bench/bench_ingest.py                 # the full run (10M stored events)
    .venv/bin/python bench/bench_ingest.py --quick         # a smoke run (tiny seed, short phases)
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import math
import os
import platform
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import seed

from hopper.access import Scope, create_token
from hopper.client import MqttSender, WebSocketSender, auth_headers
from hopper.clock import SystemClock
from hopper.config import HopperSettings, StoreSettings
from hopper.events._pb import events_pb2 as pb
from hopper.events.protobuf import decode_batch, encode_batch
from hopper.observe.metrics import HopperMetrics
from hopper.pipeline import build_chain
from hopper.store import PendingWrite, open_event_store
from hopper.store.rows import reader_event_row
from hopper.testing import free_port, write_config

BATCH_EVENTS = 100
EVENTS_PER_MS = 10  # app times of new events advance 1 ms every 10 events (unique keys)
BENCH_POOL_SEED = 23
GOAL_EVENTS_PER_S = {"sqlite": 50_000, "postgres": 30_000}
GOAL_P99_MS = 100.0
PG_SETTINGS = ("synchronous_commit", "wal_sync_method", "max_wal_size", "shared_buffers")
PHASES = ("throughput", "latency", "latency-max")  # as they run; latency-max is optional
COMMIT_EVENTS = HopperSettings().ingest.commit_max_events  # rows per transaction, as the writer
STORES = ("sqlite", "postgres")
TRANSPORTS = ("websocket", "mqtt")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- pre-built batches -----------------------------------------------------------------


@dataclass
class Batches:
    """Encoded 100-event batches and each batch's first and last app time."""

    payloads: list[bytes]
    first_ms: list[int]
    last_ms: list[int]

    def __len__(self) -> int:
        return len(self.payloads)


class Stamper:
    """Hands out batches of new, unique events with increasing app times.

    Event k (counted over the whole run on one store) gets app time ``t0 + k // 10``; each
    batch is one student's run of consecutive events, as a tablet sends them.
    """

    def __init__(self, pool: seed.EventPool, t0_ms: int) -> None:
        self.pool = pool
        self.t0 = t0_ms
        self.k = 0
        self.batch_no = 0

    def batches(self, count: int) -> Batches:
        last = self.t0 + (self.k + count * BATCH_EVENTS) // EVENTS_PER_MS
        if last > now_ms():
            raise RuntimeError("too many events for the app-time range: shorten the phases")
        out = Batches([], [], [])
        for _ in range(count):
            times = [self.t0 + (self.k + j) // EVENTS_PER_MS for j in range(BATCH_EVENTS)]
            out.payloads.append(encode_batch(self.pool.stamp(self.batch_no, times)))
            out.first_ms.append(times[0])
            out.last_ms.append(times[-1])
            self.k += BATCH_EVENTS
            self.batch_no += 1
        return out


# -- CPU accounting --------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _cpu_of_command(name: str) -> float:
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if comm.startswith(name):
                total += _proc_cpu(int(entry.name))
    return total


def _machine_cpu() -> tuple[float, float]:
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / _TICK, sum(values) / _TICK


class CpuMeter:
    """CPU seconds used over a phase by the server, PostgreSQL, Mosquitto, this process."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self._start = self._sample()

    def _sample(self) -> dict[str, float]:
        busy, total = _machine_cpu()
        return {
            "wall": time.perf_counter(),
            "server": _proc_cpu(self.server_pid),
            "postgres": _cpu_of_command("postgres"),
            "mosquitto": _cpu_of_command("mosquitto"),
            "bench": _proc_cpu(os.getpid()),
            "machine_busy": busy,
            "machine_total": total,
        }

    def stop(self) -> dict[str, float]:
        """Return each party's CPU use as % of one core (machine: % of all cores)."""
        end = self._sample()
        wall = end["wall"] - self._start["wall"]
        out = {
            k: round(100 * (end[k] - self._start[k]) / wall, 1)
            for k in ("server", "postgres", "mosquitto", "bench")
        }
        total = end["machine_total"] - self._start["machine_total"]
        busy = end["machine_busy"] - self._start["machine_busy"]
        out["machine_busy_pct"] = round(100 * busy / total, 1) if total else 0.0
        return out


class FsyncProbe:
    """How long the disk takes to make 8 KiB durable, sampled through a phase.

    A PostgreSQL commit waits for an fsync of its WAL (and SQLite's checkpoints for one of
    the database file), so the disk's fsync tail during a phase bounds the ack latency
    tail. Ten probes a second, each a rewrite of one 8 KiB block and ``fdatasync``.
    """

    def __init__(self, directory: Path, interval: float = 0.1) -> None:
        self._path = directory / f"fsync-probe-{os.getpid()}.tmp"
        self._interval = interval
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        block = os.urandom(8192)
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while not self._stop.wait(self._interval):
                os.pwrite(fd, block, 0)
                started = time.perf_counter()
                os.fdatasync(fd)
                self._samples.append((time.perf_counter() - started) * 1000)
        finally:
            os.close(fd)
            self._path.unlink(missing_ok=True)

    def stop(self) -> dict[str, float] | None:
        """Return fdatasync p50/p99/max in ms over the phase."""
        self._stop.set()
        self._thread.join()
        return _percentiles(sorted(self._samples))


# -- ceilings --------------------------------------------------------------------------


def _timed_loop(items: Sequence[Any], secs: float, work: Callable[[Any], int]) -> dict[str, Any]:
    """Run ``work`` over items (cycling) for about ``secs``; return events/s."""
    done = 0
    started = time.perf_counter()
    i = 0
    while True:
        done += work(items[i % len(items)])
        i += 1
        elapsed = time.perf_counter() - started
        if elapsed >= secs or (i >= len(items) and elapsed >= 0.2):
            break
    return {"events": done, "seconds": round(elapsed, 3), "events_per_s": round(done / elapsed)}


def upb_ceiling(batches: Batches, secs: float) -> dict[str, Any]:
    """The protobuf library alone: ``EventBatch`` and each ``Event`` parsed by upb, one core."""
    batch_type = pb.EventBatch
    return _timed_loop(batches.payloads, secs, lambda p: len(batch_type.FromString(p).events))


def parse_ceiling(batches: Batches, secs: float) -> dict[str, Any]:
    """Raw protobuf parse rate: ``decode_batch`` over the pre-built batches, one core."""
    return _timed_loop(batches.payloads, secs, lambda p: len(decode_batch(p)[0]))


def stages_ceiling(batches: Batches, secs: float) -> dict[str, Any]:
    """The edge stages (decode, validate, dedup) as the server configures them, one core."""
    settings = HopperSettings()
    chain = build_chain(settings, settings.pipeline.edge.stages, SystemClock(), HopperMetrics())
    return _timed_loop(batches.payloads, secs, lambda p: len(chain.run(p).passed))


def _groups(batches: Batches) -> Iterator[list[bytes]]:
    per_group = max(1, COMMIT_EVENTS // BATCH_EVENTS)
    for start in range(0, len(batches), per_group):
        yield batches.payloads[start : start + per_group]


def _rows_of(payloads: Sequence[bytes], received_ms: int) -> seed.Rows:
    reader_rows = []
    raw_rows = []
    for payload in payloads:
        for event in decode_batch(payload)[0]:
            reader_rows.append(reader_event_row(event, received_ms))
            raw_rows.append((event.app_time_ms, event.hash, received_ms, event.raw))
    return reader_rows, raw_rows


def insert_ceiling(kind: str, target: str, batches: Batches, secs: float) -> dict[str, Any]:
    """Raw insert rate of the rows, one transaction per ``commit_max_events`` events."""
    groups = [_rows_of(g, now_ms()) for g in _groups(batches)]  # built before timing
    if kind == "sqlite":
        conn = sqlite3.connect(target, isolation_level=None)
        # The same settings as SqliteEventStore: WAL, synchronous=NORMAL, 64 MB of cache.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-65536")

        def work(group: seed.Rows) -> int:
            reader_rows, raw_rows = group
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(seed.INSERT_RAW, raw_rows)
            conn.executemany(seed.INSERT_READER, reader_rows)
            conn.execute("COMMIT")
            return len(raw_rows)

        try:
            return _once_each(groups, secs, work) | {"method": "executemany"}
        finally:
            conn.close()
    pg = seed.pg_connect(target, autocommit=False)

    def pg_work(group: seed.Rows) -> int:
        reader_rows, raw_rows = group
        with pg.cursor() as cur:
            seed.copy_rows(cur, raw_rows, reader_rows)
        pg.commit()
        return len(raw_rows)

    try:
        return _once_each(groups, secs, pg_work) | {"method": "COPY"}
    finally:
        pg.close()


def _once_each(groups: Sequence[Any], secs: float, work: Callable[[Any], int]) -> dict[str, Any]:
    """Run ``work`` on each group once (rows can be inserted only once), for up to ``secs``."""
    done = 0
    started = time.perf_counter()
    elapsed = 0.0
    for group in groups:
        done += work(group)
        elapsed = time.perf_counter() - started
        if elapsed >= secs:
            break
    return {"events": done, "seconds": round(elapsed, 3), "events_per_s": round(done / elapsed)}


def store_commit_ceiling(settings: StoreSettings, batches: Batches, secs: float) -> dict[str, Any]:
    """Hopper's ``EventStore.commit`` alone: 100-event writes, grouped as the writer does."""
    groups = []
    for group in _groups(batches):
        received = now_ms()
        groups.append([PendingWrite("bench", received, decode_batch(p)[0]) for p in group])
    store = open_event_store(settings)
    try:
        return _once_each(groups, secs, lambda writes: sum(map(len, store.commit(writes))))
    finally:
        store.close()


# -- the server ------------------------------------------------------------------------


class Server:
    """``hopper serve`` in a subprocess, with its output in a log file."""

    def __init__(
        self, config: Path, log_path: Path, port: int, src: Path | None, token: str | None
    ) -> None:
        self.token = token
        self.base_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/v1/events/ws"
        self.log_path = log_path
        self._log = log_path.open("wb")
        env = dict(os.environ)
        if src is not None:  # another Hopper source tree (e.g. to compare two commits)
            env["PYTHONPATH"] = str(src)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hopper", "serve", "--config", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )

    def wait_ready(self, *, mqtt: bool, timeout: float = 90.0) -> None:
        """Wait until /health passes (and the MQTT source is connected when asked)."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, timeout=5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"hopper serve exited early:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    body = client.get("/health").json()
                    if body.get("ok") and (not mqtt or body.get("mqtt_ok") == 1):
                        return
                time.sleep(0.1)
        raise TimeoutError(f"hopper serve not ready in {timeout} s:\n{self.log_tail()}")

    def writer_totals(self) -> dict[str, float]:
        """Read the writer's cumulative commit counters from the server's /metrics."""
        wanted = {
            "store_commit_seconds_sum": "seconds",
            "store_commit_seconds_count": "commits",
            "store_commit_events_sum": "events",
        }
        totals = dict.fromkeys(wanted.values(), 0.0)
        with contextlib.suppress(httpx.HTTPError):
            text = httpx.get(
                f"{self.base_url}/metrics", timeout=5, headers=auth_headers(self.token)
            ).text
            for line in text.splitlines():
                name, _, value = line.partition(" ")
                if name in wanted:
                    totals[wanted[name]] = float(value)
        return totals

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server the way an operator would (SIGINT), then harder if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log("server did not stop on SIGINT; terminating it")
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        self._log.close()


class Profiler:
    """py-spy recording the server during a phase (``--profile``), as collapsed stacks."""

    def __init__(self, py_spy: str, pid: int, out: Path, secs: float, *, gil: bool) -> None:
        self.out = out
        # --gil keeps only samples of the thread holding the GIL: where the one core the
        # server's Python can use goes (waits outside the GIL drop out).
        extra = ["--gil"] if gil else []
        self.proc = subprocess.Popen(
            [py_spy, "record", "--pid", str(pid), "--duration", str(math.ceil(secs)),
             "--rate", "100", "--format", "raw", "--threads", "--nonblocking", *extra,
             "-o", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip

    def finish(self) -> dict[str, Any] | None:
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            return None
        if not self.out.is_file():
            log(f"py-spy wrote no profile: {err.decode(errors='replace').strip()[-300:]}")
            return None
        return summarize_profile(self.out)


_LINE = re.compile(r":\d+\)$")


def summarize_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Sample shares per thread, per function (self) and per Hopper function (inclusive)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        threads[frames[0].rsplit(": ", 1)[-1]] += count  # "thread (tid): name"
        functions = [_LINE.sub(")", f) for f in frames[1:]]  # per function, not per line
        if functions:
            own[functions[-1]] += count
        for function in set(functions):
            # Inclusive shares of Hopper's own functions (entry points say nothing).
            if "hopper/" in function and "hopper/cli.py" not in function:
                inclusive[function] += count

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)]

    return {
        "samples": total,
        "threads_pct": share(threads),
        "self_pct": share(own),
        "inclusive_pct": share(inclusive),
    }


# -- watching commits (MQTT) -----------------------------------------------------------


class CommitWatcher:
    """Polls the store for the newest committed app time; maps it to committed batches.

    Batches of one phase have increasing, disjoint app-time ranges and one MQTT
    subscription commits them in order (broker order, FIFO intake, one writer), so batch
    i is committed once ``max(app_time_ms) >= last_ms[i]``. A batch's commit time is the
    start of the first poll that sees it: at most one poll interval late.
    """

    def __init__(self, kind: str, target: str, interval: float = 0.002) -> None:
        self.kind = kind
        self.target = target
        self.interval = interval
        self.committed = 0
        self.polls = 0
        self._last: list[int] = []
        self.seen_at: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="commit-watcher", daemon=True)
        self.error: BaseException | None = None

    def track(self, last_ms: list[int]) -> None:
        with self._lock:
            self._last = last_ms
            self.seen_at = [0.0] * len(last_ms)
            self.committed = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _query(self) -> Callable[[], int | None]:
        sql = "SELECT max(app_time_ms) FROM raw_events"
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.target, isolation_level=None, check_same_thread=False)
            return lambda: conn.execute(sql).fetchone()[0]
        pg = seed.pg_connect(self.target)
        return lambda: pg.execute(sql).fetchone()[0]

    def _run(self) -> None:
        try:
            query = self._query()
            while not self._stop.is_set():
                started = time.perf_counter()
                newest = query()
                self.polls += 1
                with self._lock:
                    if newest is not None and self._last:
                        done = bisect.bisect_right(self._last, newest)
                        for i in range(self.committed, done):
                            self.seen_at[i] = started
                        self.committed = max(self.committed, done)
                self._stop.wait(self.interval)
        except BaseException as exc:  # reported by the phase that waits on it
            self.error = exc

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.committed < count and time.monotonic() < deadline:
            if self.error is not None:
                raise RuntimeError(f"commit watcher failed: {self.error!r}")
            time.sleep(0.005)
        return self.committed >= count


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
            "latency_ms": _percentiles(latencies),
            "ran_out_of_batches": self.exhausted,
            "anomalies": dict(self.anomalies),
            "cpu_pct": self.cpu,
            "writer": self.writer,
            "fsync_ms": self.fsync_ms,
            "profile": self.profile,
        }


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None

    def pick(q: float) -> float:
        return round(values[min(len(values) - 1, math.ceil(q * len(values)) - 1)], 2)

    return {
        "p50": pick(0.50),
        "p90": pick(0.90),
        "p99": pick(0.99),
        "max": round(values[-1], 2),
        "mean": round(sum(values) / len(values), 2),
        "count": len(values),
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


# -- one store ---------------------------------------------------------------------------


@dataclass
class Options:
    stores: list[str]
    transports: list[str]
    seed_events: int
    duration: float
    latency_duration: float
    warmup: float
    ceiling_secs: float
    connections: int
    window: int
    mqtt_window: int
    mqtt_port: int
    max_rate: int
    latency_rate: float | None
    profile: bool
    profile_gil: bool
    py_spy: str
    keep: bool
    quick: bool
    server_src: Path | None
    run_dir: Path


class StoreBench:
    """Seeded store, ceilings and end-to-end runs of one store kind."""

    def __init__(self, kind: str, opts: Options) -> None:
        self.kind = kind
        self.opts = opts
        self.meta: dict[str, Any] = {}
        self.stamper: Stamper | None = None

    def prepare(self) -> dict[str, Any]:
        """Make sure the seed exists; return its metadata."""
        n = self.opts.seed_events
        if self.kind == "sqlite":
            self.meta = seed.seed_sqlite(n)
        else:
            self.meta = seed.seed_postgres(n)
        # New events start 5 h ago (a tablet syncing late): inside the accepted window,
        # after every seeded event, with room for 180M events before reaching "now".
        t0 = now_ms() - 5 * 3_600_000
        if t0 <= self.meta["last_ms"]:
            raise RuntimeError("the seed's app times reach into the benchmark's: reseed")
        pool = seed.EventPool(seed=BENCH_POOL_SEED)
        self.stamper = Stamper(pool, t0)
        return self.meta

    def fresh_store(self, label: str) -> tuple[str, StoreSettings]:
        """A store at the seeded size: a copy of the seed file, or the cleaned-up database."""
        if self.kind == "sqlite":
            path = self.opts.run_dir / f"{label}.db"
            seed.sqlite_copy(self.opts.seed_events, path)
            return str(path), StoreSettings(backend="sqlite", sqlite_path=path)
        seed.pg_cleanup(self.meta)
        url = seed.pg_url(self.opts.seed_events)
        return url, StoreSettings(backend="postgres", postgres_url=url)

    def drop_store(self, target: str) -> None:
        if self.kind == "sqlite" and not self.opts.keep:
            seed.remove_sqlite(Path(target))

    def ceilings(self) -> dict[str, Any]:
        assert self.stamper is not None
        secs = self.opts.ceiling_secs
        # Enough rows for the time limit at up to ~200k events/s, in whole commit groups.
        count = max(COMMIT_EVENTS, int(200_000 * secs)) // BATCH_EVENTS
        log(f"{self.kind}: building {count * BATCH_EVENTS:,} events for the ceilings")
        parse_batches = self.stamper.batches(min(count, 2000))
        insert_batches = self.stamper.batches(count)
        commit_batches = self.stamper.batches(count)
        out: dict[str, Any] = {}
        log(f"{self.kind}: ceiling: protobuf library (upb) parse")
        out["upb"] = upb_ceiling(parse_batches, secs)
        log(f"{self.kind}: ceiling: protobuf parse (decode_batch)")
        out["parse"] = parse_ceiling(parse_batches, secs)
        log(f"{self.kind}: ceiling: edge stages")
        out["stages"] = stages_ceiling(parse_batches, secs)
        target, settings = self.fresh_store("ceilings")
        try:
            log(f"{self.kind}: ceiling: raw insert")
            out["insert"] = insert_ceiling(self.kind, target, insert_batches, secs)
            log(f"{self.kind}: ceiling: EventStore.commit")
            out["store_commit"] = store_commit_ceiling(settings, commit_batches, secs)
        finally:
            self.drop_store(target)
        for key, value in out.items():
            log(f"{self.kind}: {key:>12}: {value['events_per_s']:>10,} events/s")
        return out

    def run(self, transport: str) -> dict[str, Any]:
        """Throughput then latency phase of one transport against a fresh seeded store."""
        assert self.stamper is not None
        opts = self.opts
        label = f"{self.kind}-{transport}"
        target, settings = self.fresh_store(label)
        port = free_port()
        run_id = f"{os.getpid()}-{int(time.time())}-{label}"
        config: dict[str, dict[str, Any]] = {
            "server": {"host": "127.0.0.1", "port": port},
            "store": {"backend": self.kind},
            "pipeline.edge": {"sources": ["http", "websocket"]},
            "log": {"level": "WARNING"},
        }
        if self.kind == "sqlite":
            config["store"]["sqlite_path"] = target
        else:
            config["store"]["postgres_url"] = target
        # A topic and a persistent session of this run only (removed from the broker after).
        mqtt_client = f"hopper-bench-{run_id}"
        mqtt_topic = f"{mqtt_client}/tablet-0001/events"
        if transport == "mqtt":
            config["pipeline.edge"]["sources"] = ["http", "websocket", "mqtt"]
            config["mqtt"] = {
                "topic": f"{mqtt_client}/+/events",
                "client_id": mqtt_client,
                "port": opts.mqtt_port,
            }
        config_path = opts.run_dir / f"{label}.toml"
        write_config(config_path, config)
        count = math.ceil(opts.max_rate * opts.duration / BATCH_EVENTS)
        log(f"{label}: building {count * BATCH_EVENTS:,} events for the throughput phase")
        probe = self.stamper.batches(1)
        throughput_batches = self.stamper.batches(count)
        # Auth on (the default) wherever the server has it: every client uses a token.
        server_tree = opts.server_src or Path(__file__).resolve().parents[1] / "src"
        token = None
        if (server_tree / "hopper" / "access").is_dir():
            scopes = (Scope.INGEST, Scope.METRICS)
            token = create_token(settings, "bench", scopes, None, now_ms()).token
        result_auth = "tokens" if token else "none (server without auth)"
        log(f"{label}: auth {result_auth}")
        server = Server(
            config_path, opts.run_dir / f"{label}-server.log", port, opts.server_src, token
        )
        result: dict[str, Any] = {"store": self.kind, "transport": transport, "auth": result_auth}
        sender: MqttSender | None = None
        watcher: CommitWatcher | None = None
        try:
            server.wait_ready(mqtt=transport == "mqtt")
            if transport == "mqtt":
                watcher = CommitWatcher(self.kind, target)
                watcher.start()
                sender = MqttSender(
                    port=opts.mqtt_port, topic=mqtt_topic, client_id=f"{mqtt_client}-pub"
                )
                # The subscription is in place once a probe batch gets committed.
                watcher.track(probe.last_ms)
                sender.publish(probe.payloads[0])
                if not watcher.wait_for(1, timeout=30):
                    raise TimeoutError(f"MQTT probe not committed:\n{server.log_tail()}")
            else:
                asyncio.run(
                    websocket_phase("probe", server.ws_url, probe, duration=30, connections=1,
                                    window=1, token=token)
                )  # fmt: skip
            throughput = self._phase(
                "throughput", transport, server, throughput_batches, sender, watcher, None
            )
            result["throughput"] = throughput
            max_rate = throughput["events_per_s"]
            # The goal's latency is at half the goal rate; half the measured maximum, when
            # clearly higher, is measured too (as "latency-max"), and reported beside it.
            goal_half = GOAL_EVENTS_PER_S[self.kind] / 2
            paced = [("latency", opts.latency_rate or goal_half)]
            if opts.latency_rate is None and max_rate / 2 > 1.1 * goal_half:
                paced.append(("latency-max", max_rate / 2))
            last_ms = throughput_batches.last_ms[-1]
            sent = throughput["batches_sent"]
            for name, rate in paced:
                if rate < BATCH_EVENTS:
                    raise RuntimeError(f"{name} at {rate} events/s: too low for a paced phase")
                latency_count = math.ceil(rate * opts.latency_duration / BATCH_EVENTS) + 1
                latency_batches = self.stamper.batches(latency_count)
                result[name] = self._phase(
                    name, transport, server, latency_batches, sender, watcher, rate
                )
                last_ms = latency_batches.last_ms[-1]
                sent += result[name]["batches_sent"]
            stored = count_stored(self.kind, target, throughput_batches.first_ms[0], last_ms)
            result["stored_check"] = {
                "events_sent": sent * BATCH_EVENTS,
                "events_stored": stored,
                "ok": stored == sent * BATCH_EVENTS,
            }
        except Exception as exc:
            code = server.proc.poll()
            if code is None:
                raise
            raise RuntimeError(f"the server exited ({code}) during the run: {exc!r}") from exc
        finally:
            if sender is not None:
                sender.close()
            if watcher is not None:
                watcher.stop()
            server.stop()
            if transport == "mqtt":
                _forget_mqtt_session(mqtt_client, opts.mqtt_port)
            self.drop_store(target)
        return result

    def _phase(
        self,
        name: str,
        transport: str,
        server: Server,
        batches: Batches,
        sender: MqttSender | None,
        watcher: CommitWatcher | None,
        rate: float | None,
    ) -> dict[str, Any]:
        opts = self.opts
        duration = opts.duration if rate is None else opts.latency_duration
        label = f"{self.kind}-{transport}-{name}"
        pace = "as fast as acks allow" if rate is None else f"paced at {rate:,.0f} events/s"
        log(f"{label}: {duration:g} s, {pace}")
        profiler = None
        if opts.profile and rate is None:
            profile_path = opts.run_dir / f"profile-{label}.txt"
            profiler = Profiler(
                opts.py_spy, server.proc.pid, profile_path, duration, gil=opts.profile_gil
            )
        # Each phase starts with the page cache's dirty pages written out, so that it does
        # not pay for the write-back of the phase (or the store copy) before it.
        os.sync()
        meter = CpuMeter(server.proc.pid)
        fsync = FsyncProbe(opts.run_dir)
        writer_before = server.writer_totals()
        started = time.perf_counter()
        if transport == "websocket":
            phase = asyncio.run(
                websocket_phase(
                    name,
                    server.ws_url,
                    batches,
                    duration=duration,
                    connections=opts.connections,
                    window=opts.window,
                    rate=rate,
                    token=server.token,
                )
            )
        else:
            assert sender is not None and watcher is not None
            phase = mqtt_phase(
                name, sender, watcher, batches, duration=duration, window=opts.mqtt_window,
                rate=rate,
            )  # fmt: skip
        phase.cpu = meter.stop()
        phase.fsync_ms = fsync.stop()
        phase.writer = _writer_summary(
            writer_before, server.writer_totals(), time.perf_counter() - started
        )
        if profiler is not None:
            phase.profile = profiler.finish()
        summary = phase.summary(opts.warmup)
        lat = summary["latency_ms"] or {}
        log(
            f"{label}: {summary['events_per_s']:,} events/s, ack latency p50 "
            f"{lat.get('p50')} ms, p99 {lat.get('p99')} ms; CPU % {phase.cpu}; "
            f"writer {summary['writer']}; disk fdatasync ms {summary['fsync_ms']}"
        )
        if summary["anomalies"] or summary["ran_out_of_batches"]:
            log(f"{label}: anomalies {summary['anomalies']}, ran out: {phase.exhausted}")
        return summary


def _writer_summary(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, float]:
    """How the server's writer spent a phase: commits, events a commit, share of time busy."""
    commits = after["commits"] - before["commits"]
    busy = after["seconds"] - before["seconds"]
    return {
        "commits": commits,
        "events_per_commit": round((after["events"] - before["events"]) / commits)
        if commits
        else 0,
        "commit_ms_mean": round(busy / commits * 1000, 2) if commits else 0.0,
        "busy_pct": round(busy / seconds * 100, 1) if seconds else 0.0,
    }


def _forget_mqtt_session(client_id: str, port: int) -> None:
    """Remove the server's persistent session from the broker (a clean-session connect)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=True,
        protocol=mqtt.MQTTv311,
    )
    with contextlib.suppress(OSError):
        client.connect("127.0.0.1", port)
        client.loop_start()
        time.sleep(0.2)
        client.disconnect()
        client.loop_stop()


# -- the run -----------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
        cwd=seed.BENCH_DIR,
    ).stdout.strip()
    pg_version = None
    pg_settings: dict[str, str] = {}
    with contextlib.suppress(Exception):
        with seed.pg_connect(f"{seed.PG_HOST_URL}/postgres") as pg:
            pg_version = pg.execute("SHOW server_version").fetchone()[0]
            # The settings that decide commit latency: the figures depend on them.
            for name in PG_SETTINGS:
                pg_settings[name] = pg.execute(f"SHOW {name}").fetchone()[0]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgres": pg_version,
        "postgres_settings": pg_settings,
        "hopper_commit": commit,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _fmt_int(value: Any) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}"


def results_table(results: dict[str, Any]) -> str:
    head = (
        "store     transport   stored      e2e ev/s   parse ceil  insert ceil  "
        "e2e/parse  e2e/insert  lat @ ev/s   p50 ms   p99 ms  goal"
    )
    lines = [head, "-" * len(head)]
    for store, data in results["stores"].items():
        ceilings = data.get("ceilings", {})
        parse = ceilings.get("parse", {}).get("events_per_s")
        insert = ceilings.get("insert", {}).get("events_per_s")
        for transport, run in data.get("runs", {}).items():
            if "error" in run:
                lines.append(f"{store:<9} {transport:<10}  error: {run['error'][:80]}")
                continue
            e2e = run["throughput"]["events_per_s"]
            lat = run["latency"]
            pct = lat["latency_ms"] or {}
            lines.append(
                f"{store:<9} {transport:<10} {_fmt_int(data['seed']['events']):>10} "
                f"{_fmt_int(e2e):>11} {_fmt_int(parse):>12} {_fmt_int(insert):>12} "
                f"{_ratio(e2e, parse):>10} {_ratio(e2e, insert):>11} "
                f"{_fmt_int(lat['target_events_per_s']):>11} {pct.get('p50', '-'):>8} "
                f"{pct.get('p99', '-'):>8}  {run['goal']['verdict']}"
            )
    lines.append("")
    lines.append(
        "store       upb parse  stages ceil  store.commit ceil   (one core; parse ceil = "
        "decode_batch; insert ceil = SQLite executemany / PostgreSQL COPY)"
    )
    for store, data in results["stores"].items():
        ceilings = data.get("ceilings", {})
        if ceilings:
            lines.append(
                f"{store:<9} {_fmt_int(ceilings['upb']['events_per_s']):>11} "
                f"{_fmt_int(ceilings['stages']['events_per_s']):>12} "
                f"{_fmt_int(ceilings['store_commit']['events_per_s']):>18}"
            )
    lines.append("")
    lines.append(
        "store     transport   phase        ev/s  min-max 1 s     p50 ms   p99 ms  fsync p99  "
        "CPU % (server / postgres / mosquitto / bench / machine busy)"
    )
    for store, data in results["stores"].items():
        for transport, run in data.get("runs", {}).items():
            for name in PHASES:
                phase = run.get(name)
                if not phase:
                    continue
                pct = phase["latency_ms"] or {}
                cpu = phase["cpu_pct"]
                disk = (phase.get("fsync_ms") or {}).get("p99", "-")
                lines.append(
                    f"{store:<9} {transport:<10}  {name:<11}{_fmt_int(phase['events_per_s']):>8} "
                    f"{_steady_range(phase):>12} {pct.get('p50', '-'):>10} "
                    f"{pct.get('p99', '-'):>8} {disk:>10}  "
                    f"{cpu.get('server')} / {cpu.get('postgres')} / {cpu.get('mosquitto')} / "
                    f"{cpu.get('bench')} / {cpu.get('machine_busy_pct')}"
                )
    return "\n".join(lines)


def _steady_range(phase: dict[str, Any]) -> str:
    """Slowest and fastest whole second after the warm-up (k events/s)."""
    seconds = phase["events_per_s_by_second"]
    end = int(phase["warmup_seconds"] + phase["measured_seconds"])
    whole = seconds[math.ceil(phase["warmup_seconds"]) : end]
    if not whole:
        return "-"
    return f"{min(whole) / 1000:.0f}k-{max(whole) / 1000:.0f}k"


def goal_verdict(store: str, run: dict[str, Any]) -> dict[str, Any]:
    goal = GOAL_EVENTS_PER_S[store]
    e2e = run["throughput"]["events_per_s"]
    latency = run["latency"]
    p99 = (latency["latency_ms"] or {}).get("p99")
    extra = run.get("latency-max")
    rate = latency["target_events_per_s"] or 0
    rate_ok = e2e >= goal
    p99_ok = p99 is not None and p99 < GOAL_P99_MS and rate >= goal / 2
    anomalies = (
        run["throughput"]["anomalies"] or latency["anomalies"] or (extra or {}).get("anomalies")
    )
    if not run["stored_check"]["ok"] or anomalies:
        verdict = "INVALID: anomalies or stored events != sent (see results.json)"
    elif rate_ok and p99_ok:
        verdict = "met"
    else:
        misses = []
        if not rate_ok:
            misses.append(f"rate {e2e:,}<{goal:,}")
        if p99 is None or p99 >= GOAL_P99_MS:
            misses.append(f"p99 {p99} ms")
        elif rate < goal / 2:
            misses.append(f"p99 at {rate:,}<{goal // 2:,}/s")
        verdict = "missed: " + ", ".join(misses)
    return {"events_per_s_goal": goal, "p99_ms_goal": GOAL_P99_MS, "verdict": verdict}


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description="Hopper's end-to-end ingest benchmark (see bench/README.md)."
    )
    parser.add_argument("--stores", default=",".join(STORES), help="sqlite,postgres")
    parser.add_argument("--transports", default=",".join(TRANSPORTS), help="websocket,mqtt")
    parser.add_argument("--seed-events", type=int, default=None, help="events already stored")
    parser.add_argument("--duration", type=float, default=None, help="seconds per phase")
    parser.add_argument("--latency-duration", type=float, default=None)
    parser.add_argument("--warmup", type=float, default=None, help="seconds not counted")
    parser.add_argument("--ceiling-secs", type=float, default=None)
    parser.add_argument("--connections", type=int, default=2, help="WebSocket connections")
    parser.add_argument("--window", type=int, default=32, help="frames in flight a connection")
    parser.add_argument(
        "--mqtt-window", type=int, default=200, help="MQTT batches published, not committed"
    )
    parser.add_argument(
        "--max-rate", type=int, default=150_000, help="events/s the pre-built batches can feed"
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=None,
        help="events/s of the latency phase (default: half the goal; plus half the max)",
    )
    parser.add_argument(
        "--mqtt-port", type=int, default=1883, help="the Mosquitto broker on 127.0.0.1 to use"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the server (throughput)")
    parser.add_argument(
        "--profile-gil", action="store_true", help="with --profile: only GIL-holding samples"
    )
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy executable")
    parser.add_argument("--keep", action="store_true", help="keep the SQLite copies")
    parser.add_argument("--quick", action="store_true", help="tiny seed, short phases: a smoke run")
    parser.add_argument(
        "--server-src", type=Path, default=None, help="run the server from this src/ directory"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    stores = [s for s in args.stores.split(",") if s]
    transports = [t for t in args.transports.split(",") if t]
    for value, known in ((stores, STORES), (transports, TRANSPORTS)):
        unknown = set(value) - set(known)
        if unknown:
            parser.error(f"unknown {', '.join(sorted(unknown))}; known: {', '.join(known)}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = seed.RESULTS_DIR / f"ingest-{stamp}{'-quick' if quick else ''}"
    duration = args.duration or (3.0 if quick else 15.0)
    return Options(
        stores=stores,
        transports=transports,
        seed_events=args.seed_events or (20_000 if quick else seed.DEFAULT_EVENTS),
        duration=duration,
        latency_duration=args.latency_duration or duration,
        warmup=args.warmup if args.warmup is not None else (0.5 if quick else 3.0),
        ceiling_secs=args.ceiling_secs or (1.0 if quick else 5.0),
        connections=args.connections,
        window=args.window,
        mqtt_window=args.mqtt_window,
        mqtt_port=args.mqtt_port,
        max_rate=args.max_rate,
        latency_rate=args.latency_rate,
        profile=args.profile,
        profile_gil=args.profile_gil,
        py_spy=args.py_spy,
        keep=args.keep,
        quick=quick,
        server_src=args.server_src,
        run_dir=run_dir,
    )


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    opts.run_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "kind": "smoke (--quick): not a measurement" if opts.quick else "measurement",
        "environment": environment(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()},
        "stores": {},
    }
    load = os.getloadavg()[0]
    if load > 0.5:
        log(f"warning: load average {load:.2f} before starting: the machine is not quiet")
    failed = False
    for kind in opts.stores:
        bench = StoreBench(kind, opts)
        data: dict[str, Any] = {"runs": {}}
        results["stores"][kind] = data
        try:
            data["seed"] = bench.prepare()
            data["ceilings"] = bench.ceilings()
        except Exception as exc:
            log(f"{kind}: cannot prepare the store: {exc!r}")
            data["error"] = repr(exc)
            failed = True
            continue
        for transport in opts.transports:
            try:
                run = bench.run(transport)
                run["goal"] = goal_verdict(kind, run)
            except Exception as exc:
                log(f"{kind}-{transport}: failed: {exc!r}")
                run = {"error": repr(exc)}
                failed = True
            data["runs"][transport] = run
    out = opts.run_dir / "results.json"
    out.write_text(json.dumps(results, indent=2))
    table = results_table(results)
    (opts.run_dir / "results.txt").write_text(table + "\n")
    print()
    if opts.quick:
        print("SMOKE RUN (--quick): tiny seed and short phases; these figures are not results.")
    print(table)
    for kind, data in results["stores"].items():
        for transport, run in data.get("runs", {}).items():
            profile = (run.get("throughput") or {}).get("profile")
            if profile:
                print(f"\nserver profile, {kind}-{transport} throughput ({profile['samples']} "
                      "samples): self % / inclusive %")  # fmt: skip
                threads = ", ".join(f"{name} {pct}%" for name, pct in profile["threads_pct"])
                print(f"  threads: {threads}")
                for name, pct in profile["self_pct"][:10]:
                    print(f"  self {pct:5.1f}  {name}")
                for name, pct in profile["inclusive_pct"][:12]:
                    print(f"  incl {pct:5.1f}  {name}")
    print(f"\nresults: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
