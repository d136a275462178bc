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
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import seed
from ceilings import (
    insert_ceiling,
    parse_ceiling,
    stages_ceiling,
    store_commit_ceiling,
    upb_ceiling,
)
from harness import (
    BATCH_EVENTS,
    BENCH_POOL_SEED,
    COMMIT_EVENTS,
    GOAL_EVENTS_PER_S,
    STORES,
    TRANSPORTS,
    Batches,
    CommitWatcher,
    CpuMeter,
    FsyncProbe,
    Profiler,
    Server,
    Stamper,
    log,
    now_ms,
)
from phases import count_stored, mqtt_phase, websocket_phase
from report import environment, goal_verdict, results_table

from hopper.access import Scope, create_token
from hopper.client import MqttSender
from hopper.config import StoreSettings
from hopper.testing import free_port, write_config

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
