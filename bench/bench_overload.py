"""Overload: twice the measured maximum for a minute, WebSocket and HTTP clients mixed.

Reports the server's peak RSS, the share of refusals per source kind (HTTP 503; WebSocket
"busy" acks), disconnects (goal: 0), and checks that every acknowledged event is stored.
The server is the current tree, on SQLite, with auth on (a token per run).

    .venv/bin/python bench/bench_overload.py                 # measure the maximum, then 2x for 60 s
    .venv/bin/python bench/bench_overload.py --quick         # 3 s + 10 s: a smoke run
    .venv/bin/python bench/bench_overload.py --rate 60000    # skip the measurement: 2 x 60,000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import seed
from harness import BATCH_EVENTS, BENCH_POOL_SEED, Server, Stamper, log, now_ms
from phases import websocket_phase
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hopper.access import Scope, create_token
from hopper.client import auth_headers, is_busy
from hopper.config import StoreSettings
from hopper.testing import free_port, write_config

MIB = 1024 * 1024


@dataclass
class Tally:
    """What one kind of client saw."""

    batches_sent: int = 0
    acked: int = 0
    refused: int = 0  # HTTP 503 or WebSocket busy ack
    accepted_events: int = 0
    disconnects: int = 0
    skipped: int = 0  # the client itself could not keep up with its schedule
    other: Counter[str] = field(default_factory=Counter)


def _status_kib(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


async def _ws_client(
    url: str, token: str, batches: list[bytes], interval: float, stop_at: float, tally: Tally
) -> None:
    """Send on a fixed schedule whatever the acks say (open loop), counting the answers."""
    try:
        async with connect(
            url, additional_headers=auth_headers(token), max_size=None, max_queue=None
        ) as ws:
            outstanding = 0

            async def read() -> None:
                nonlocal outstanding
                async for message in ws:
                    ack = orjson.loads(message)
                    outstanding -= 1
                    if is_busy(ack):
                        tally.refused += 1
                    elif ack.get("error"):
                        tally.other[str(ack["error"])[:60]] += 1
                    else:
                        tally.acked += 1
                        tally.accepted_events += ack["accepted"]

            reader = asyncio.create_task(read())
            next_at = time.monotonic()
            for payload in batches:
                if time.monotonic() >= stop_at:
                    break
                await ws.send(payload)
                tally.batches_sent += 1
                outstanding += 1
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            deadline = time.monotonic() + 60
            while outstanding > 0 and time.monotonic() < deadline and not reader.done():
                await asyncio.sleep(0.05)
            reader.cancel()
    except (ConnectionClosed, OSError) as exc:
        tally.disconnects += 1
        tally.other[f"disconnect: {exc}"[:60]] += 1


async def _http_client(
    client: httpx.AsyncClient,
    batches: list[bytes],
    interval: float,
    stop_at: float,
    tally: Tally,
    max_in_flight: int = 32,
) -> None:
    """POST on a fixed schedule, up to ``max_in_flight`` requests at once."""
    in_flight: set[asyncio.Task[None]] = set()

    async def post(payload: bytes) -> None:
        try:
            response = await client.post(
                "/v1/events", content=payload, headers={"content-type": "application/x-protobuf"}
            )
        except httpx.HTTPError as exc:
            tally.disconnects += 1
            tally.other[f"http error: {exc!r}"[:60]] += 1
            return
        if response.status_code == 200:
            tally.acked += 1
            tally.accepted_events += response.json()["accepted"]
        elif response.status_code == 503:
            tally.refused += 1
        else:
            tally.other[f"HTTP {response.status_code}"] += 1

    next_at = time.monotonic()
    for payload in batches:
        if time.monotonic() >= stop_at:
            break
        if len(in_flight) >= max_in_flight:
            tally.skipped += 1
        else:
            task = asyncio.create_task(post(payload))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            tally.batches_sent += 1
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    if in_flight:
        await asyncio.wait(in_flight, timeout=60)


async def _overload(
    server: Server,
    token: str,
    batches: list[bytes],
    rate: float,
    duration: float,
    ws_clients: int,
    http_clients: int,
) -> dict[str, Tally]:
    clients = ws_clients + http_clients
    per_client_rate = rate / clients  # events/s
    interval = BATCH_EVENTS / per_client_rate
    share = len(batches) // clients
    stop_at = time.monotonic() + duration
    ws, http = Tally(), Tally()
    limits = httpx.Limits(max_connections=http_clients * 32, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=server.base_url, headers=auth_headers(token), timeout=90, limits=limits
    ) as client:
        tasks = [
            _ws_client(
                server.ws_url, token, batches[i * share : (i + 1) * share], interval, stop_at, ws
            )
            for i in range(ws_clients)
        ]
        tasks += [
            _http_client(
                client,
                batches[(ws_clients + i) * share : (ws_clients + i + 1) * share],
                interval,
                stop_at,
                http,
            )  # fmt: skip
            for i in range(http_clients)
        ]
        await asyncio.gather(*tasks)
    return {"websocket": ws, "http": http}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of overload")
    parser.add_argument("--measure-secs", type=float, default=10.0, help="seconds to find max")
    parser.add_argument("--rate", type=float, default=None, help="the maximum, if known")
    parser.add_argument("--factor", type=float, default=2.0, help="offered load / maximum")
    parser.add_argument("--ws-clients", type=int, default=8)
    parser.add_argument("--http-clients", type=int, default=8)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.measure_secs = 10.0, 3.0
    run_dir = seed.RESULTS_DIR / f"overload-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' * args.quick}"
    run_dir.mkdir(parents=True)
    db = run_dir / "events.db"
    store = StoreSettings(backend="sqlite", sqlite_path=db)
    token = create_token(store, "bench", (Scope.INGEST, Scope.METRICS), None, now_ms()).token
    port = free_port()
    config = run_dir / "hopper.toml"
    write_config(
        config,
        {
            "server": {"host": "127.0.0.1", "port": port},
            "store": {"backend": "sqlite", "sqlite_path": str(db)},
            "log": {"level": "WARNING"},
        },
    )
    stamper = Stamper(seed.EventPool(seed=BENCH_POOL_SEED), now_ms() - 5 * 3_600_000)
    server = Server(config, run_dir / "server.log", port, None, token)
    results: dict[str, Any] = {"options": vars(args)}
    try:
        server.wait_ready(mqtt=False)
        pid = server.proc.pid
        results["rss_start_mib"] = _status_kib(pid, "VmRSS") / 1024
        rate = args.rate
        if rate is None:
            count = int(120_000 * args.measure_secs / BATCH_EVENTS)
            log(f"measuring the maximum: {args.measure_secs:g} s of WebSocket, 2 connections")
            phase = asyncio.run(
                websocket_phase(
                    "max", server.ws_url, stamper.batches(count), duration=args.measure_secs,
                    connections=2, window=32, token=token,
                )
            )  # fmt: skip
            rate = float(phase.summary(min(1.0, args.measure_secs / 4))["events_per_s"])
        results["max_events_per_s"] = rate
        with sqlite3.connect(db) as conn:  # the measurement's events are not the overload's
            stored_before = conn.execute("SELECT count(*) FROM reader_events").fetchone()[0]
        offered = args.factor * rate
        count = int(offered * args.duration / BATCH_EVENTS * 1.05) + 1
        log(f"building {count * BATCH_EVENTS:,} events; overload at {offered:,.0f} events/s")
        batches = stamper.batches(count).payloads
        results["offered_events_per_s"] = offered
        sampler_stop = False
        peak = [0]

        async def run() -> dict[str, Tally]:
            async def sample() -> None:
                while not sampler_stop:
                    peak[0] = max(peak[0], _status_kib(pid, "VmRSS"))
                    await asyncio.sleep(0.25)

            sampling = asyncio.create_task(sample())
            try:
                return await _overload(
                    server, token, batches, offered, args.duration, args.ws_clients,
                    args.http_clients,
                )  # fmt: skip
            finally:
                sampling.cancel()

        started = time.monotonic()
        tallies = asyncio.run(run())
        elapsed = time.monotonic() - started
        results["rss_peak_mib"] = max(peak[0], _status_kib(pid, "VmHWM")) / 1024
        results["rss_end_mib"] = _status_kib(pid, "VmRSS") / 1024
    finally:
        server.stop()
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT count(*) FROM reader_events").fetchone()[0] - stored_before
    acked_events = sum(t.accepted_events for t in tallies.values())
    results["kinds"] = {kind: asdict(t) for kind, t in tallies.items()}
    results["elapsed_s"] = elapsed
    results["stored_events"] = stored
    results["acked_events"] = acked_events
    # An event counted as accepted was stored then; one stored but never acknowledged (the
    # client gave up waiting) may be stored too: so stored >= accepted, never less.
    results["every_acked_event_stored"] = stored >= acked_events
    results["accepted_events_per_s"] = acked_events / args.duration
    lines = [
        f"maximum (measured) {rate:,.0f} events/s; offered {offered:,.0f} events/s "
        f"({args.factor:g}x) for {args.duration:g} s with {args.ws_clients} WebSocket and "
        f"{args.http_clients} HTTP clients",
        f"server RSS: start {results['rss_start_mib']:.0f} MiB, peak "
        f"{results['rss_peak_mib']:.0f} MiB, end {results['rss_end_mib']:.0f} MiB",
        f"{'kind':<10} {'sent':>8} {'acked':>8} {'refused':>8} {'refused %':>10} "
        f"{'disconnects':>12} {'client skipped':>15}",
    ]
    for kind, t in tallies.items():
        answered = t.acked + t.refused
        share = 100 * t.refused / answered if answered else 0.0
        lines.append(
            f"{kind:<10} {t.batches_sent:>8} {t.acked:>8} {t.refused:>8} {share:>9.1f}% "
            f"{t.disconnects:>12} {t.skipped:>15}"
            + (f"  other: {dict(t.other)}" if t.other else "")
        )
    verdict = "every acknowledged event stored" if stored >= acked_events else "MISSING EVENTS"
    lines.append(
        f"accepted {acked_events:,} events ({results['accepted_events_per_s']:,.0f}/s); "
        f"stored {stored:,}: {verdict}"
    )
    text = "\n".join(lines)
    print(text)
    (run_dir / "results.txt").write_text(text + "\n")
    (run_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    log(f"results: {run_dir}")
    disconnects = sum(t.disconnects for t in tallies.values())
    return 0 if stored >= acked_events and disconnects == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
