"""Edge → topic → worker(s) → PostgreSQL, end to end: events/s with 1 and 2 workers.

An edge node (SQLite store, auth on) stores each event and forwards it to the topic
``edge-events``; ``hopper worker central`` processes consume the topic into a PostgreSQL
event store (decode, validate, dedup). WebSocket clients send as fast as acks allow for
``--duration`` seconds; the central store is polled until every event sent has arrived.

Reported per worker count: the edge's acknowledged events/s, the end-to-end events/s
(events sent / time until the last reached PostgreSQL), and the lag at the end (how long
after the edge's last ack the central store was complete).

    .venv/bin/python bench/bench_topic_pipeline.py                  # sqlite topics, 1 and 2 workers
    .venv/bin/python bench/bench_topic_pipeline.py --topics kafka      # on a Tansu broker
    .venv/bin/python bench/bench_topic_pipeline.py --topics nats --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import seed
from harness import BATCH_EVENTS, BENCH_POOL_SEED, Server, Stamper, log, now_ms
from phases import websocket_phase

from hopper.access import Scope, create_token
from hopper.config import StoreSettings
from hopper.testing import free_port, run_tansu, write_config

POSTGRES = os.environ.get("HOPPER_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def central_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema for the central store, dropped afterwards."""
    schema = f"bench_central_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@contextlib.contextmanager
def topic_backend(kind: str, run_dir: Path) -> Iterator[dict[str, Any]]:
    """The [topics] section for ``kind``, with a broker of its own where needed."""
    if kind == "sqlite":
        yield {"backend": "sqlite", "sqlite_path": str(run_dir / "topics.db")}
    elif kind == "kafka":
        with run_tansu(run_dir / "tansu.log") as port:
            yield {"backend": "kafka", "kafka_bootstrap": f"127.0.0.1:{port}"}
    else:
        yield {"backend": "nats", "nats_prefix": f"b{uuid.uuid4().hex[:10]}"}


def central_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM raw_events").fetchone()
    return int(row[0]) if row else 0


def run_once(opts: argparse.Namespace, workers: int, run_dir: Path) -> dict[str, Any]:
    label = f"{opts.topics}-{workers}w"
    edge_db = run_dir / f"{label}-edge.db"
    port = free_port()
    store = StoreSettings(backend="sqlite", sqlite_path=edge_db)
    token = create_token(store, "bench", (Scope.INGEST, Scope.METRICS), None, now_ms()).token
    with topic_backend(opts.topics, run_dir) as topics, central_schema() as central_url:
        topics = {**topics, "partitions": opts.partitions, "external": ["edge-events"]}
        edge_config = write_config(
            run_dir / f"{label}-edge.toml",
            {
                "server": {"host": "127.0.0.1", "port": port},
                "store": {"sqlite_path": edge_db},
                "pipeline.edge": {"sinks": ["store", "topic:edge-events"]},
                "topics": topics,
                "log": {"level": "WARNING"},
            },
        )
        central_config = write_config(
            run_dir / f"{label}-central.toml",
            {
                "store": {"backend": "postgres", "postgres_url": central_url},
                "pipeline.central": {
                    "sources": ["topic:edge-events"],
                    "stages": ["decode", "validate", "dedup"],
                    "sinks": ["store"],
                },
                "topics": topics,
                "log": {"level": "INFO"},
            },
        )
        stamper = Stamper(seed.EventPool(seed=BENCH_POOL_SEED), now_ms() - 5 * 3_600_000)
        count = int(opts.max_rate * opts.duration / BATCH_EVENTS)
        log(f"{label}: building {count * BATCH_EVENTS:,} events")
        batches = stamper.batches(count)
        edge = Server(edge_config, run_dir / f"{label}-edge.log", port, None, token)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            edge.wait_ready(mqtt=False)
            for n in range(workers):
                out = (run_dir / f"{label}-worker-{n}.log").open("wb")
                procs.append(
                    subprocess.Popen(  # noqa: S603 - our own CLI
                        [
                            sys.executable,
                            "-m",
                            "hopper",
                            "worker",
                            "central",
                            "--config",
                            str(central_config),
                        ],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )  # fmt: skip
                )
            time.sleep(3.0)  # the workers join their group
            log(f"{label}: {opts.duration:g} s of WebSocket, {opts.connections} connections")
            started = time.monotonic()
            phase = asyncio.run(
                websocket_phase(
                    label, edge.ws_url, batches, duration=opts.duration,
                    connections=opts.connections, window=32, token=token,
                )
            )  # fmt: skip
            acked_at = time.monotonic()
            summary = phase.summary(0.0)
            sent = phase.accepted
            deadline = acked_at + opts.drain_secs
            arrived = central_count(central_url)
            while arrived < sent and time.monotonic() < deadline:
                time.sleep(0.2)
                arrived = central_count(central_url)
            done_at = time.monotonic()
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            edge.stop()
    result = {
        "topics": opts.topics,
        "workers": workers,
        "edge_events_per_s": summary["events_per_s"],
        "events": sent,
        "arrived": arrived,
        "end_to_end_events_per_s": round(arrived / (done_at - started)),
        "lag_after_last_ack_s": round(done_at - acked_at, 2),
        "complete": arrived >= sent,
    }
    log(f"{label}: {result}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topics", choices=("sqlite", "kafka", "nats"), default="sqlite")
    parser.add_argument("--workers", default="1,2", help="worker counts to measure")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--max-rate", type=float, default=60_000, help="events/s to pre-build")
    parser.add_argument("--drain-secs", type=float, default=300.0)
    opts = parser.parse_args()
    run_dir = seed.RESULTS_DIR / f"topic-pipeline-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True)
    results = [run_once(opts, int(n), run_dir) for n in opts.workers.split(",")]
    lines = [
        f"{'topics':<8} {'workers':>7} {'edge ev/s':>10} {'e2e ev/s':>10} {'lag s':>7} complete",
        *(
            f"{r['topics']:<8} {r['workers']:>7} {r['edge_events_per_s']:>10,} "
            f"{r['end_to_end_events_per_s']:>10,} {r['lag_after_last_ack_s']:>7} {r['complete']}"
            for r in results
        ),
    ]
    print("\n".join(lines))
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    (run_dir / "results.txt").write_text("\n".join(lines) + "\n")
    log(f"results: {run_dir}")
    return 0 if all(r["complete"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
