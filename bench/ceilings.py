"""The machine's ceilings, measured on the benchmark's own rows: parse, stages, insert, commit."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import seed
from harness import BATCH_EVENTS, COMMIT_EVENTS, Batches, now_ms

from hopper.clock import SystemClock
from hopper.config import HopperSettings, StoreSettings
from hopper.events._pb import events_pb2 as pb
from hopper.events.protobuf import decode_batch
from hopper.observe.metrics import HopperMetrics
from hopper.pipeline import build_chain
from hopper.store import PendingWrite, open_event_store
from hopper.store.rows import reader_event_row

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
