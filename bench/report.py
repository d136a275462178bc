"""The benchmark report: environment, tables, goal verdicts."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import seed
from harness import GOAL_EVENTS_PER_S, GOAL_P99_MS, PG_SETTINGS, PHASES


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
