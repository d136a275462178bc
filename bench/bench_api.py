"""Analytics API latency under load: a mix of endpoints at 200 requests/s while ingest runs.

The store is the processing benchmark's seed (``bench_processing.seed_sqlite``: N events
of a simulated school of 400 students over school days, with reference data), with 16
classes of 25 students added and ``hopper job process`` run over it (a full recompute).
``hopper serve`` then runs on a copy; WebSocket clients send new events at
``--ingest-rate`` events/s while API clients send ``--rate`` requests/s (open loop) over
a mix of endpoints. Reported per endpoint: p50 / p99 / max latency, beside a baseline
measured in the same run on the same store: the endpoint's main query as one plain SQL
statement through sqlite3 (no HTTP, no JSON, no auth).

    .venv/bin/python bench/bench_api.py          # 10M stored, 200 req/s, 10k events/s, 30 s
    .venv/bin/python bench/bench_api.py --quick            # 200k stored, 5 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import seed
from bench_processing import seed_sqlite, sqlite_seed_path
from harness import BENCH_POOL_SEED, Server, Stamper, log, now_ms
from phases import IngestProcess

from hopper.access import Scope, create_token
from hopper.config import load_settings
from hopper.edge.processing import run_processing
from hopper.testing import FrozenClock, free_port, write_config

CLASSES = 16
PER_CLASS = 25

# Each endpoint: its path (with {u} a student, {c} a class), and its main query as plain SQL.
ENDPOINTS: dict[str, tuple[str, str]] = {
    "student summary": (
        "/v1/students/{u}",
        "SELECT * FROM an_students WHERE username = :u",
    ),
    "student books": (
        "/v1/students/{u}/books",
        "SELECT * FROM an_student_books WHERE username = :u ORDER BY book_id LIMIT 51",
    ),
    "student timeline": (
        "/v1/students/{u}/timeline",
        "SELECT id, app_time_ms, event_type, payload FROM reader_events WHERE username = :u "
        "ORDER BY app_time_ms DESC, id DESC LIMIT 51",
    ),
    "class report": (
        "/v1/portal/classes/{c}",
        "SELECT day, sum(reading_ms) FROM an_student_days WHERE username IN (SELECT s.username "
        "FROM ec_class_members m JOIN ec_students s ON s.student_id = m.student_id WHERE "
        "m.class_id = :c) AND day >= :first GROUP BY day",
    ),
    "school report": (
        "/v1/portal/schools/{s}",
        "SELECT day, sum(reading_ms) FROM an_student_days WHERE school_id = :s AND day >= "
        ":first GROUP BY day",
    ),
    "devops ingest": ("/v1/devops/ingest", "SELECT count(*) FROM reader_events_errors"),
}
MIX = (
    ["student summary"] * 4
    + ["student books"] * 2
    + ["student timeline"] * 2
    + [
        "class report",
        "school report",
        "devops ingest",
    ]
)


def add_classes(db: Path) -> tuple[list[str], str]:
    """Add students and classes to the store's reference data; return usernames, school."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        users = [r[0] for r in conn.execute("SELECT DISTINCT username FROM an_students")]
        if not users:
            users = [
                r[0] for r in conn.execute("SELECT DISTINCT username FROM reader_events LIMIT 400")
            ]
        school = conn.execute("SELECT school_id FROM ec_schools LIMIT 1").fetchone()[0]
        conn.execute("BEGIN")
        conn.execute("DELETE FROM ec_students")
        conn.execute("DELETE FROM ec_classes")
        conn.execute("DELETE FROM ec_class_members")
        for n, user in enumerate(sorted(users)):
            conn.execute(
                "INSERT INTO ec_students (student_id, username, display_name, school_id, grade, "
                "row_hash, changed_ms) VALUES (?, ?, ?, ?, '5', x'00', 0)",
                (f"st-{n}", user, user, school),
            )
            klass = f"class-{n // PER_CLASS:02d}"
            if n % PER_CLASS == 0:
                conn.execute(
                    "INSERT INTO ec_classes (class_id, school_id, name, grade, row_hash, "
                    "changed_ms) VALUES (?, ?, ?, '5', x'00', 0)",
                    (klass, school, klass),
                )
            conn.execute(
                "INSERT INTO ec_class_members (class_id, student_id, row_hash, changed_ms) "
                "VALUES (?, ?, x'00', 0)",
                (klass, f"st-{n}"),
            )
        conn.execute("COMMIT")
    finally:
        conn.close()
    return sorted(users), school


def baseline(db: Path, users: list[str], school: str, rounds: int) -> dict[str, dict[str, float]]:
    """Each endpoint's main query through sqlite3 on the same store, ``rounds`` times."""
    conn = sqlite3.connect(db)
    first = "2000-01-01"
    out = {}
    try:
        for name, (_, sql) in ENDPOINTS.items():
            times = []
            for n in range(rounds):
                params = {
                    "u": users[n % len(users)],
                    "c": f"class-{n % CLASSES:02d}",
                    "s": school,
                    "first": first,
                }
                started = time.perf_counter()
                conn.execute(sql, params).fetchall()
                times.append((time.perf_counter() - started) * 1000)
            out[name] = _stats(times)
    finally:
        conn.close()
    return out


def _stats(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {
        "n": len(ms),
        "p50": round(statistics.median(ms), 2),
        "p99": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2),
        "max": round(ms[-1], 2),
    }


async def api_load(
    base_url: str, token: str, users: list[str], school: str, rate: float, secs: float
) -> dict[str, list[float]]:
    """Open-loop requests at ``rate`` per second over the mix; latencies per endpoint."""
    rng = random.Random(5)
    latencies: dict[str, list[float]] = {name: [] for name in ENDPOINTS}
    errors: list[str] = []
    tasks: set[asyncio.Task[None]] = set()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=base_url, headers={"authorization": f"Bearer {token}"}, limits=limits, timeout=30
    ) as client:

        async def one(name: str, path: str) -> None:
            started = time.perf_counter()
            try:
                response = await client.get(path)
            except httpx.HTTPError as exc:  # e.g. a keep-alive connection closed under us
                errors.append(f"{path}: {type(exc).__name__}")
                return
            if response.status_code != 200:
                errors.append(f"{path}: {response.status_code}")
                return
            latencies[name].append((time.perf_counter() - started) * 1000)

        next_at = time.perf_counter()
        stop = next_at + secs
        while next_at < stop:
            name = rng.choice(MIX)
            path = ENDPOINTS[name][0].format(
                u=rng.choice(users), c=f"class-{rng.randrange(CLASSES):02d}", s=school
            )
            task = asyncio.create_task(one(name, path))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        if tasks:
            await asyncio.wait(tasks, timeout=60)
    if errors:
        log(f"{len(errors)} API errors, e.g. {errors[:3]}")
    return latencies


def processed_store(kind: str, events: int, *, quick: bool) -> tuple[Path, Path, list[str], str]:
    """A new run directory with a processed copy of the N-event seed and its classes.

    Returns the directory, the store's path, the students' usernames and the school.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = seed.RESULTS_DIR / f"{kind}-{stamp}{'-quick' * quick}"
    run_dir.mkdir(parents=True)
    seed_sqlite(events)
    db = run_dir / "events.db"
    log(f"copying the {events:,}-event seed")
    shutil.copyfile(sqlite_seed_path(events), db)
    log("processing it (a full recompute)")
    started = time.perf_counter()
    summary = run_processing(load_settings(store={"sqlite_path": db}), FrozenClock(now_ms()))
    log(f"processed in {time.perf_counter() - started:.1f} s: {summary}")
    users, school = add_classes(db)
    return run_dir, db, users, school


def start_server(run_dir: Path, db: Path, token: str, api_port: int | None = None) -> Server:
    """``hopper serve`` on the store ``db``, its config and log in ``run_dir``."""
    port = free_port()
    config = run_dir / "hopper.toml"
    server: dict[str, str | int] = {"host": "127.0.0.1", "port": port}
    if api_port is not None:
        server["api_port"] = api_port
    write_config(
        config,
        {
            "server": server,
            "store": {"sqlite_path": str(db)},
            "log": {"level": "WARNING"},
        },
    )
    return Server(config, run_dir / "server.log", port, None, token)


def wait_for_api(base_url: str, timeout: float = 60.0) -> None:
    """Wait until the API process answers its /health."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the API process at {base_url} did not answer")
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="events stored")
    parser.add_argument("--rate", type=float, default=200.0, help="API requests/s")
    parser.add_argument("--ingest-rate", type=float, default=10_000.0, help="events/s sent")
    parser.add_argument("--duration", type=float, help="seconds of load a phase (30; quick: 5)")
    parser.add_argument(
        "--ports",
        choices=("both", "main", "api"),
        default="both",
        help="serve the load on the node's main port, its API process (server.api_port), or both "
        "in turn",
    )
    parser.add_argument("--quick", action="store_true", help="200k stored, 5 s")
    opts = parser.parse_args()
    if opts.quick:
        opts.events = 200_000
    if opts.duration is None:
        opts.duration = 5.0 if opts.quick else 30.0
    run_dir, db, users, school = processed_store("api", opts.events, quick=opts.quick)
    base = baseline(db, users, school, 300)
    token = create_token(
        load_settings(store={"sqlite_path": db}).store,
        "bench",
        (Scope.INGEST, Scope.APPS, Scope.PORTAL, Scope.DEVOPS, Scope.METRICS),
        None,
        now_ms(),
    ).token
    api_port = free_port()
    server = start_server(run_dir, db, token, api_port)
    phases = {"main": server.base_url, "api": f"http://127.0.0.1:{api_port}"}
    if opts.ports != "both":
        phases = {opts.ports: phases[opts.ports]}
    stamper = Stamper(seed.EventPool(seed=BENCH_POOL_SEED), now_ms() - 5 * 3_600_000)
    per_phase = int(opts.ingest_rate * opts.duration / 100) + 2
    results: dict[str, tuple[dict[str, list[float]], float]] = {}
    try:
        server.wait_ready(mqtt=False)
        wait_for_api(phases.get("api", server.base_url))
        for phase, url in phases.items():
            log(f"phase {phase}: API load on {url}")
            ingest = IngestProcess(
                server.ws_url,
                stamper.batches(per_phase),  # new events each phase
                duration=opts.duration,
                rate=opts.ingest_rate,
                token=token,
            )
            time.sleep(1.0)
            latencies = asyncio.run(
                api_load(url, token, users, school, opts.rate, opts.duration - 2)
            )
            summary = ingest.result(timeout=opts.duration + 60)
            results[phase] = (latencies, summary["events_per_s"])
    finally:
        server.stop()
    lines = [
        f"{opts.events:,} events stored; API {opts.rate:g} requests/s "
        f"for {opts.duration - 2:g} s a phase"
    ]
    report: dict[str, dict[str, Any]] = {}
    for phase, (latencies, ingest_rate) in results.items():
        where = "the node's main port" if phase == "main" else "the API process (server.api_port)"
        lines += [
            "",
            f"served by {where}, while ingest ran at {ingest_rate:,} events/s "
            f"(asked {opts.ingest_rate:,.0f})",
            f"{'endpoint':<18} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
            "   baseline SQL p50 / p99 ms",
        ]
        rows = []
        every: list[float] = []
        for name, ms in latencies.items():
            every += ms
            stats = _stats(ms) if ms else {"n": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
            b = base[name]
            rows.append({"endpoint": name, **stats, "baseline": b})
            lines.append(
                f"{name:<18} {stats['n']:>5} {stats['p50']:>8} {stats['p99']:>8} "
                f"{stats['max']:>8}   {b['p50']} / {b['p99']}"
            )
        overall = _stats(every)
        lines.append(
            f"{'all':<18} {overall['n']:>5} {overall['p50']:>8} {overall['p99']:>8} "
            f"{overall['max']:>8}"
        )
        lines.append(f"goal p99 < 50 ms: {'met' if overall['p99'] < 50 else 'missed'}")
        report[phase] = {"endpoints": rows, "all": overall, "ingest_events_per_s": ingest_rate}
    if len(results) == 2:
        ratio = report["api"]["all"]["p99"] / max(report["main"]["all"]["p99"], 0.01)
        lines += ["", f"p99 of the API process / p99 of the main port: {ratio:.2f}"]
    text = "\n".join(lines)
    print(text)
    (run_dir / "results.txt").write_text(text + "\n")
    (run_dir / "results.json").write_text(json.dumps(report, indent=2))
    log(f"results: {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
