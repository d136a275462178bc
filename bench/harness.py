"""Pieces of the ingest benchmarks: batches, CPU and disk probes, the server, profiles.

Also the commit watcher (MQTT acks) and the percentiles every phase reports.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import seed

from hopper.client import auth_headers
from hopper.config import HopperSettings
from hopper.events.protobuf import encode_batch

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
        return percentiles(sorted(self._samples))


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


def percentiles(values: list[float]) -> dict[str, float] | None:
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
