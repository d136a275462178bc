"""The live monitor under a school's load: 1,000 tablets, a CAM heartbeat each every 5 s.

``hopper serve`` runs in a subprocess on a fresh SQLite store holding the school's
reference data (the tablets' students in classes of 25). Each simulated tablet keeps its own
WebSocket connection and sends a one-event batch (``cam_status``) every ``--period``
seconds, spread evenly, through real ingest; the acks are checked. The tablets run all
along while, in turn:

1. ``baseline``: no monitor client is connected (the monitor sink still follows the
   commits, as it always does);
2. ``monitor``: ``--clients`` SSE streams (``GET /v1/monitor/classes/{id}/events``), split
   over the classes, are open; each ``event: device`` received is timed against the send of
   that tablet's last heartbeat (``from send``) and against its ``last_seen_ms``, the
   node's receive time stamped just before the commit (``from node receipt``);
3. ``baseline again``, after the clients are gone (drift check).

Reported: delivery delay p50 / p99 / max (goal: p99 < 1 s), updates received against
expected, and the server's CPU (% of one core) and RSS per phase, so the figure added by
the clients is the difference between the monitor phase and the baselines of the same
run. The full run also measures the same load on a server whose edge topology has no
``monitor`` sink (what following the commits costs at all).

    .venv/bin/python bench/bench_monitor.py            # 1,000 tablets, 50 clients, 60 s phases
    .venv/bin/python bench/bench_monitor.py --quick    # 100 tablets, 10 clients, 8 s phases
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import seed
from harness import CpuMeter, Server, log, now_ms, percentiles

from hopper.access import Scope, create_token
from hopper.client import WebSocketSender, make_event
from hopper.config import load_settings
from hopper.events.protobuf import encode_batch
from hopper.store import open_event_store
from hopper.store.engine import engine_for
from hopper.store.reference import (
    ec_books,
    ec_class_members,
    ec_classes,
    ec_schools,
    ec_students,
)
from hopper.testing import free_port, write_config

PER_CLASS = 25
SCHOOL = "school-001"
BOOKS = 40
GOAL_P99_MS = 1000.0


# -- the school ------------------------------------------------------------------------


def _row(**values: Any) -> dict[str, Any]:
    digest = hashlib.blake2b(repr(sorted(values.items())).encode(), digest_size=16).digest()
    return {**values, "row_hash": digest, "changed_ms": now_ms()}


def make_store(db: Path, tablets: int) -> list[str]:
    """Create the store with the school's students, classes and books; return class ids."""
    settings = load_settings(store={"sqlite_path": db})
    store = open_event_store(settings.store)
    store.migrate()
    store.close()
    classes = [f"class-{n:02d}" for n in range(math.ceil(tablets / PER_CLASS))]
    engine = engine_for(settings.store)
    try:
        with engine.begin() as conn:
            conn.execute(ec_schools.insert(), [_row(school_id=SCHOOL, name="S", time_zone="UTC")])
            conn.execute(
                ec_students.insert(),
                [
                    _row(student_id=f"st{n:04d}", username=f"student{n:04d}",
                         display_name=f"Student {n}", school_id=SCHOOL, grade="5")
                    for n in range(tablets)
                ],
            )  # fmt: skip
            conn.execute(
                ec_classes.insert(),
                [_row(class_id=c, school_id=SCHOOL, name=c, grade="5") for c in classes],
            )
            conn.execute(
                ec_class_members.insert(),
                [
                    _row(class_id=classes[n // PER_CLASS], student_id=f"st{n:04d}")
                    for n in range(tablets)
                ],
            )
            conn.execute(
                ec_books.insert(),
                [
                    _row(book_id=f"book-{b:03d}", title=f"Book {b}", page_count=60, language="en")
                    for b in range(BOOKS)
                ],
            )
    finally:
        engine.dispose()
    return classes


# -- load: tablets and monitor clients -------------------------------------------------


@dataclass
class Load:
    """What the tablets sent and the clients received, shared by the tasks (one loop)."""

    tablets: int
    period: float
    last_sent: dict[str, float] = field(default_factory=dict)  # device -> wall time
    sent: int = 0
    acked: int = 0
    anomalies: dict[str, int] = field(default_factory=dict)
    measuring: bool = False
    from_send_ms: list[float] = field(default_factory=list)
    from_node_ms: list[float] = field(default_factory=list)
    updates: int = 0
    snapshots: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def anomaly(self, what: str) -> None:
        self.anomalies[what[:80]] = self.anomalies.get(what[:80], 0) + 1


async def tablet(n: int, url: str, token: str, load: Load, connects: asyncio.Semaphore) -> None:
    """One tablet: its own WebSocket, a CAM heartbeat every period, acks checked."""
    device, user = f"tablet-{n:04d}", f"student{n:04d}"
    book, page, battery = f"book-{n % BOOKS:03d}", 1 + n % 50, 100
    async with connects:
        ws = WebSocketSender(url, token=token, max_in_flight=4)
        await ws.__aenter__()
    try:
        start = time.monotonic()
        next_at = start + load.period * n / load.tablets
        beat = 0
        while not load.stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(load.stop.wait(), delay)
                if load.stop.is_set():
                    return
            beat += 1
            if beat % 6 == 0:
                page += 1  # a page turn every 30 s, a battery step every 60 s
            if beat % 12 == 0:
                battery = max(5, battery - 1)
            event = make_event(
                "cam_status",
                {"foreground_app": "hopper.reader", "book_id": book, "page": page,
                 "screen_on": True, "battery_pct": battery},
                username=user, device_id=device, school_id=SCHOOL, app_version="3.2.1",
            )  # fmt: skip
            load.last_sent[device] = time.time()
            load.sent += 1
            try:
                ack = await ws.wait(await ws.send(encode_batch([event])))
            except ConnectionError as exc:
                load.anomaly(f"connection lost: {exc}")
                return
            if ack.get("accepted") == 1:
                load.acked += 1
            else:
                load.anomaly(f"ack {ack}")
            next_at += load.period
    finally:
        await ws.close()


async def monitor_client(
    client: httpx.AsyncClient, class_id: str, load: Load, ready: asyncio.Event
) -> None:
    """One open monitor page: an SSE stream of one class, every update timed."""
    path = f"/v1/monitor/classes/{class_id}/events"
    async with client.stream("GET", path) as response:
        if response.status_code != 200:
            load.anomaly(f"SSE {response.status_code}")
            ready.set()
            return
        event, data = "", b""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = line[6:].encode()
            elif not line and data:
                received = time.time()
                if event == "snapshot":
                    load.snapshots += 1
                    ready.set()
                elif event == "device" and load.measuring:
                    change = orjson.loads(data)
                    seen_ms = change.get("last_seen_ms")
                    sent = load.last_sent.get(change["device_id"])
                    if seen_ms is not None:
                        load.updates += 1
                        load.from_node_ms.append(received * 1000 - seen_ms)
                        if sent is not None:
                            load.from_send_ms.append((received - sent) * 1000)
                event, data = "", b""


# -- measuring the server --------------------------------------------------------------


class RssSampler:
    """The server's resident memory, sampled twice a second over a phase."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.samples.append(rss_mib(self.pid))

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        if not self.samples:
            self.samples.append(rss_mib(self.pid))
        return {
            "mean": round(statistics.fmean(self.samples), 1),
            "max": round(max(self.samples), 1),
            "end": round(self.samples[-1], 1),
        }


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def measure(server: Server, seconds: float, name: str, load: Load) -> dict[str, Any]:
    """Measure CPU and RSS of the server over ``seconds`` while the load runs."""
    sent, acked = load.sent, load.acked
    cpu = CpuMeter(server.proc.pid)
    rss = RssSampler(server.proc.pid)
    await asyncio.sleep(seconds)
    cpu_pct, rss_mib = cpu.stop(), rss.stop()
    rate = round((load.acked - acked) / seconds, 1)
    log(f"{name}: server CPU {cpu_pct['server']}% of a core, RSS {rss_mib['end']} MiB, {rate}/s")
    return {
        "phase": name,
        "seconds": seconds,
        "cpu_pct": cpu_pct,
        "rss_mib": rss_mib,
        "heartbeats_per_s": rate,
        "sent": load.sent - sent,
    }


def server_metric(server: Server, name: str) -> dict[str, float]:
    """Read one metric's samples (name -> value) from the server's /metrics."""
    text = httpx.get(f"{server.base_url}/metrics", headers=server_headers(server), timeout=5).text
    out = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def server_headers(server: Server) -> dict[str, str]:
    return {"authorization": f"Bearer {server.token}"} if server.token else {}


# -- one server ------------------------------------------------------------------------


async def run_load(
    server: Server, opts: argparse.Namespace, classes: list[str], *, with_clients: bool
) -> dict[str, Any]:
    """Start the tablets; measure the phases; stop everything; return the figures."""
    load = Load(opts.tablets, opts.period)
    assert server.token is not None
    connects = asyncio.Semaphore(50)
    tablets = [
        asyncio.create_task(tablet(n, server.ws_url, server.token, load, connects))
        for n in range(opts.tablets)
    ]
    phases = []
    try:
        log(f"{opts.tablets} tablets connecting; warm-up {opts.warmup:g} s")
        await asyncio.sleep(opts.warmup)
        phases.append(await measure(server, opts.duration, "baseline (no clients)", load))
        if with_clients:
            limits = httpx.Limits(max_connections=opts.clients + 5)
            async with httpx.AsyncClient(
                base_url=server.base_url, headers=server_headers(server), limits=limits,
                timeout=httpx.Timeout(30, read=None),
            ) as client:  # fmt: skip
                readies = [asyncio.Event() for _ in range(opts.clients)]
                clients = [
                    asyncio.create_task(
                        monitor_client(client, classes[i % len(classes)], load, readies[i])
                    )
                    for i in range(opts.clients)
                ]
                await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 30)
                log(f"{opts.clients} monitor clients have their snapshots")
                await asyncio.sleep(1.0)
                load.measuring = True
                phases.append(await measure(server, opts.duration, "monitor (clients)", load))
                load.measuring = False
                for task in clients:
                    task.cancel()
                await asyncio.gather(*clients, return_exceptions=True)
            await asyncio.sleep(2.0)
            phases.append(await measure(server, opts.duration, "baseline again", load))
    finally:
        load.stop.set()
        await asyncio.gather(*tablets, return_exceptions=True)
    per_class = {c: 0 for c in classes}
    for n in range(opts.tablets):
        per_class[classes[n // PER_CLASS]] += 1
    followed = sum(per_class[classes[i % len(classes)]] for i in range(opts.clients))
    expected = followed * opts.duration / opts.period
    return {
        "phases": phases,
        "sent": load.sent,
        "acked": load.acked,
        "anomalies": load.anomalies,
        "updates": load.updates,
        "updates_expected": round(expected),
        "delay_from_send_ms": percentiles(sorted(load.from_send_ms)),
        "delay_from_node_ms": percentiles(sorted(load.from_node_ms)),
    }


def start_server(run_dir: Path, db: Path, token: str, name: str, *, monitor: bool) -> Server:
    port = free_port()
    sections: dict[str, dict[str, Any]] = {
        "server": {"host": "127.0.0.1", "port": port, "max_connections": 5000},
        "store": {"sqlite_path": str(db)},
        "log": {"level": "WARNING"},
    }
    if not monitor:
        sections["pipeline.edge"] = {"sinks": ["store", "protos", "lp-events"]}
    config = write_config(run_dir / f"{name}.toml", sections)
    server = Server(config, run_dir / f"{name}.log", port, None, token)
    server.wait_ready(mqtt=False)
    return server


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tablets", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50, help="open monitor SSE streams")
    parser.add_argument("--period", type=float, default=5.0, help="seconds between heartbeats")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per phase")
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--skip-no-monitor", action="store_true", help="skip that server run")
    parser.add_argument("--quick", action="store_true")
    opts = parser.parse_args()
    if opts.quick:
        opts.tablets, opts.clients, opts.duration, opts.warmup = 100, 10, 8.0, 6.0
        opts.skip_no_monitor = True
    run_dir = seed.RESULTS_DIR / f"monitor-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' * opts.quick}"
    run_dir.mkdir(parents=True)
    load_avg = os.getloadavg()[0]
    if load_avg > 0.5:
        log(f"warning: load average {load_avg:.2f} at the start; the figures will be noisy")
    results: dict[str, Any] = {"options": vars(opts), "load_average_start": load_avg}
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run

    if not opts.skip_no_monitor:
        db = run_dir / "no-monitor.db"
        classes = make_store(db, opts.tablets)
        token = create_token(
            load_settings(store={"sqlite_path": db}).store, "bench",
            [Scope.INGEST, Scope.ADMIN], None, now_ms(),
        ).token  # fmt: skip
        server = start_server(run_dir, db, token, "no-monitor", monitor=False)
        try:
            log("server without the monitor sink")
            results["no_monitor_sink"] = runner(run_load(server, opts, classes, with_clients=False))
        finally:
            server.stop()

    db = run_dir / "monitor.db"
    classes = make_store(db, opts.tablets)
    token = create_token(
        load_settings(store={"sqlite_path": db}).store, "bench",
        [Scope.INGEST, Scope.ADMIN], None, now_ms(),
    ).token  # fmt: skip
    server = start_server(run_dir, db, token, "monitor", monitor=True)
    try:
        log("server with the monitor (the default edge topology)")
        results["monitor"] = runner(run_load(server, opts, classes, with_clients=True))
        results["server_delivery_seconds"] = server_metric(server, "monitor_delivery_seconds")
        results["server_changes"] = server_metric(server, "monitor_changes_total")
    finally:
        server.stop()

    text = report(results, opts)
    print(text)
    (run_dir / "results.txt").write_text(text + "\n")
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    log(f"results: {run_dir}")
    return 0


def report(results: dict[str, Any], opts: argparse.Namespace) -> str:
    run = results["monitor"]
    lines = [
        f"{opts.tablets} tablets, a CAM heartbeat each every {opts.period:g} s over its own "
        f"WebSocket ({opts.tablets / opts.period:,.0f} events/s); {opts.clients} SSE monitor "
        f"clients over {math.ceil(opts.tablets / PER_CLASS)} classes; {opts.duration:g} s phases",
        "",
        f"{'server, phase':<40} {'CPU % core':>10} {'RSS MiB mean/end':>17} {'bench CPU %':>11}"
        f" {'machine %':>9} {'acked/s':>8}",
    ]
    rows = [("no monitor sink, " + p["phase"], p) for p in
            results.get("no_monitor_sink", {}).get("phases", [])]  # fmt: skip
    rows += [("monitor sink, " + p["phase"], p) for p in run["phases"]]
    for name, p in rows:
        cpu, rss = p["cpu_pct"], p["rss_mib"]
        lines.append(
            f"{name:<40} {cpu['server']:>10} {rss['mean']:>8} / {rss['end']:<6} "
            f"{cpu['bench']:>11} {cpu['machine_busy_pct']:>9} {p['heartbeats_per_s']:>8}"
        )
    phases = {p["phase"]: p for p in run["phases"]}
    base = [phases[k] for k in ("baseline (no clients)", "baseline again") if k in phases]
    with_clients = phases.get("monitor (clients)")
    if base and with_clients:
        base_cpu = statistics.fmean(p["cpu_pct"]["server"] for p in base)
        base_rss = statistics.fmean(p["rss_mib"]["mean"] for p in base)
        lines += [
            "",
            f"added by {opts.clients} clients: CPU "
            f"{with_clients['cpu_pct']['server'] - base_cpu:+.1f}% of one core, RSS "
            f"{with_clients['rss_mib']['mean'] - base_rss:+.1f} MiB "
            "(monitor phase against the mean of the baselines around it)",
        ]
    if "no_monitor_sink" in results:
        no_sink = results["no_monitor_sink"]["phases"][0]
        first = run["phases"][0]
        lines.append(
            f"the monitor sink itself (no clients) against no monitor sink: CPU "
            f"{first['cpu_pct']['server'] - no_sink['cpu_pct']['server']:+.1f}% of one core, RSS "
            f"{first['rss_mib']['mean'] - no_sink['rss_mib']['mean']:+.1f} MiB"
        )
    send, node = run["delay_from_send_ms"], run["delay_from_node_ms"]
    lines.append("")
    for name, stats in (("from send", send), ("from node receipt", node)):
        if stats is None:
            lines.append(f"delivery delay {name}: no updates received")
            continue
        lines.append(
            f"delivery delay {name:<18} p50 {stats['p50']:>7.1f} ms  p99 {stats['p99']:>7.1f} ms"
            f"  max {stats['max']:>7.1f} ms  ({stats['count']:,} updates)"
        )
    lines.append(
        f"updates received {run['updates']:,} of ~{run['updates_expected']:,} expected; "
        f"heartbeats sent {run['sent']:,}, acked {run['acked']:,}; anomalies "
        f"{run['anomalies'] or 'none'}"
    )
    if send is not None:
        verdict = "met" if send["p99"] < GOAL_P99_MS else "missed"
        lines.append(f"goal p99 < {GOAL_P99_MS:.0f} ms (from send): {verdict}")
    if opts.quick:
        lines.append("SMOKE RUN (--quick): the figures say little")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
