"""Fill a Hopper store with N existing events, fast, for the ingest benchmark.

An ingest benchmark on an empty table measures nothing: the dedup index (the primary key
of ``raw_events``) and the tables must already hold what a school server holds after a
month. This writes rows straight into the store (never through HTTP), built by the same
row builders as Hopper's stores (``hopper.store.rows``), from realistic events of a
simulated school, spread over the 29 days before seeding (inside the default
``max_event_age`` of 30 days, so the dedup index really covers them).

- SQLite: ``executemany`` in big transactions into a fresh file, cached as
  ``bench/results/seed-sqlite-<N>-v<format>.db`` and copied per run (seeding is paid once).
- PostgreSQL: ``COPY`` into the database ``hopper_bench`` (created if missing), reused
  when it already holds N seeded rows; rows added by earlier benchmark runs are deleted.

    .venv/bin/python bench/seed.py --store sqlite --events 10000000
    .venv/bin/python bench/seed.py --store postgres --events 10000000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hopper.config import StoreSettings
from hopper.events._pb import events_pb2 as pb
from hopper.events.protobuf import parse_event
from hopper.simulate.school import SimulatedSchool
from hopper.store.rows import RAW_EVENT_COLUMNS, READER_EVENT_COLUMNS, reader_event_row

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

SEED_FORMAT = 2  # bump when what seeding writes changes: cached seeds are then rebuilt
SEED_POOL_SEED = 11  # seeded events and benchmark events come from different pools
DAY_MS = 86_400_000
SEED_SPAN_MS = 29 * DAY_MS  # inside the default max_event_age_secs (30 days)
SEED_GAP_MS = 6 * 3_600_000  # seeded app times end 6 h before seeding; new events come after
CHUNK = 50_000  # rows per transaction while seeding

PG_HOST_URL = "postgresql://postgres@127.0.0.1:5432"
PG_BENCH_DB = "hopper_bench"  # holds the default 10M seed; other sizes get their own database
DEFAULT_EVENTS = 10_000_000
PG_META_TABLE = "hopper_bench_seed"

INSERT_RAW = (
    f"INSERT INTO raw_events ({', '.join(RAW_EVENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(RAW_EVENT_COLUMNS))})"
)
INSERT_READER = (
    f"INSERT INTO reader_events ({', '.join(READER_EVENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(READER_EVENT_COLUMNS))})"
)
# Seeding runs alone, before any measurement, so it does not take EVENT_WRITERS_LOCK
# (hopper.store.postgres) as Hopper's own writers do; do not reuse it as a live writer.
COPY_RAW = f"COPY raw_events ({', '.join(RAW_EVENT_COLUMNS)}) FROM STDIN"
COPY_READER = f"COPY reader_events ({', '.join(READER_EVENT_COLUMNS)}) FROM STDIN"

Rows = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]  # (reader rows, raw rows)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- realistic events ------------------------------------------------------------------


class EventPool:
    """Templates of realistic events (a simulated school), restamped into unique events.

    ``runs`` are sequences of ``run_len`` consecutive events of one student, as a tablet
    sends them. Setting a new ``app_time_ms`` on a template gives new raw bytes, hence a
    new event: callers stamp each (template, time) pair at most once.
    """

    def __init__(
        self, *, seed: int, students: int = 400, runs: int = 600, run_len: int = 100
    ) -> None:
        school = SimulatedSchool(students, school_id=f"school-{seed:03d}", seed=seed)
        rng = random.Random(seed)
        self.runs: list[list[pb.Event]] = []
        for _ in range(runs):
            student = rng.choice(school.students)
            run: list[pb.Event] = []
            # Events of a run differ in more than their app time (two identical heartbeats
            # stamped with the same millisecond would be one event, a duplicate).
            seen: set[bytes] = set()
            while len(run) < run_len:
                event = student.next_event(0)
                event.app_time_ms = 0
                key = event.SerializeToString()
                if key not in seen:
                    seen.add(key)
                    run.append(event)
            self.runs.append(run)
        self.flat = [event for run in self.runs for event in run]
        self.run_len = run_len

    def stamp(self, run: int, times: Sequence[int]) -> list[bytes]:
        """Return the raw bytes of run ``run``'s events stamped with ``times``."""
        raws = []
        for event, app_time_ms in zip(self.runs[run % len(self.runs)], times, strict=False):
            event.app_time_ms = app_time_ms
            raws.append(event.SerializeToString())
        return raws


def rows_of(raws: Sequence[bytes], received_ms: Sequence[int]) -> Rows:
    """Build the reader_events and raw_events rows of events, with Hopper's row builders."""
    reader_rows = []
    raw_rows = []
    for index, (raw, received) in enumerate(zip(raws, received_ms, strict=True)):
        event = parse_event(index, raw)
        reader_rows.append(reader_event_row(event, received))
        raw_rows.append((event.app_time_ms, event.hash, received, event.raw))
    return reader_rows, raw_rows


def seed_chunks(n: int, first_ms: int, last_ms: int, chunk: int = CHUNK) -> Iterator[Rows]:
    """Yield the rows of N seeded events in chunks, in app-time order (strictly increasing)."""
    pool = EventPool(seed=SEED_POOL_SEED)
    flat = pool.flat
    span = last_ms - first_ms
    for start in range(0, n, chunk):
        count = min(chunk, n - start)
        raws = []
        received = []
        for i in range(start, start + count):
            event = flat[i % len(flat)]
            app_time = first_ms + i * span // n
            event.app_time_ms = app_time
            raws.append(event.SerializeToString())
            # Tablets upload within seconds to minutes of the event (deterministic spread).
            received.append(app_time + 200 + (i * 7919) % 120_000)
        yield rows_of(raws, received)


class Progress:
    """Prints rows/s and ETA on one line at most every ``every`` seconds."""

    def __init__(self, label: str, total: int, every: float = 2.0) -> None:
        self.label = label
        self.total = total
        self.every = every
        self.started = time.perf_counter()
        self._last = 0.0

    def update(self, done: int, *, force: bool = False) -> None:
        elapsed = time.perf_counter() - self.started
        if not force and elapsed - self._last < self.every:
            return
        self._last = elapsed
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        print(
            f"  {self.label}: {done:,}/{self.total:,} rows, {rate:,.0f} rows/s, "
            f"{elapsed:,.0f} s elapsed, ETA {eta:,.0f} s",
            flush=True,
        )


# -- SQLite ----------------------------------------------------------------------------


def sqlite_seed_path(n: int) -> Path:
    return RESULTS_DIR / f"seed-sqlite-{n}-v{SEED_FORMAT}.db"


def _sqlite_meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def sqlite_seed_meta(n: int) -> dict[str, Any] | None:
    """Return the metadata of the cached SQLite seed of N events, or None if absent."""
    path = sqlite_seed_path(n)
    meta_path = _sqlite_meta_path(path)
    if not path.is_file() or not meta_path.is_file():
        return None
    meta: dict[str, Any] = json.loads(meta_path.read_text())
    if meta.get("events") != n or meta.get("format") != SEED_FORMAT:
        return None
    return meta


def _remove_sqlite(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def seed_sqlite(n: int, *, force: bool = False) -> dict[str, Any]:
    """Build (or reuse) the cached SQLite file holding N seeded events; return its metadata."""
    from hopper.store.sqlite import SqliteEventStore

    meta = None if force else sqlite_seed_meta(n)
    if meta is not None:
        return meta
    path = sqlite_seed_path(n)
    partial = path.with_name(path.name + ".partial")
    _remove_sqlite(partial)
    _sqlite_meta_path(path).unlink(missing_ok=True)
    _remove_sqlite(path)
    store = SqliteEventStore(partial)  # Hopper's own schema and migrations
    store.migrate()
    store.close()
    seeded_at = now_ms()
    first_ms, last_ms = seeded_at - SEED_GAP_MS - SEED_SPAN_MS, seeded_at - SEED_GAP_MS
    print(f"Seeding SQLite {path.name} with {n:,} events...", flush=True)
    conn = sqlite3.connect(partial, isolation_level=None)
    # A throw-away file until it is complete: no journal, no fsync. WAL is set at the end.
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1000000")
    progress = Progress("sqlite seed", n)
    done = 0
    for reader_rows, raw_rows in seed_chunks(n, first_ms, last_ms):
        conn.execute("BEGIN")
        conn.executemany(INSERT_RAW, raw_rows)
        conn.executemany(INSERT_READER, reader_rows)
        conn.execute("COMMIT")
        done += len(raw_rows)
        progress.update(done)
    progress.update(done, force=True)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    partial.rename(path)
    meta = {
        "store": "sqlite",
        "events": n,
        "format": SEED_FORMAT,
        "first_ms": first_ms,
        "last_ms": last_ms,
        "seeded_at_ms": seeded_at,
        "seconds": round(time.perf_counter() - progress.started, 1),
        "bytes": path.stat().st_size,
    }
    _sqlite_meta_path(path).write_text(json.dumps(meta, indent=2))
    print(f"Seeded {n:,} events in {meta['seconds']} s ({meta['bytes'] / 1e9:.2f} GB).", flush=True)
    return meta


def sqlite_copy(n: int, dest: Path) -> dict[str, Any]:
    """Copy the cached seed of N events (seeding it first if needed) to ``dest``."""
    meta = seed_sqlite(n)
    _remove_sqlite(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    shutil.copyfile(sqlite_seed_path(n), dest)
    # Write the copy out now: otherwise the kernel flushes gigabytes of dirty pages during
    # the measurement, and the run measures the disk's write-back instead of Hopper.
    os.sync()
    elapsed = time.perf_counter() - started
    if elapsed > 2:
        print(f"  copied the seeded store ({meta['bytes'] / 1e9:.2f} GB) in {elapsed:.1f} s")
    return meta


def remove_sqlite(path: Path) -> None:
    """Delete a SQLite store and its WAL files."""
    _remove_sqlite(path)


# -- PostgreSQL ------------------------------------------------------------------------


def pg_connect(url: str, *, autocommit: bool = True) -> Any:
    """Connect to PostgreSQL (autocommit unless told otherwise)."""
    import psycopg

    return psycopg.connect(url, autocommit=autocommit, connect_timeout=10)


def pg_database(n: int) -> str:
    """Name the database holding a seed of N events (so a quick run keeps the full seed)."""
    return PG_BENCH_DB if n == DEFAULT_EVENTS else f"{PG_BENCH_DB}_{n}"


def pg_url(n: int) -> str:
    """Return the URL of the database holding a seed of N events."""
    return f"{PG_HOST_URL}/{pg_database(n)}"


def ensure_pg_database(n: int) -> None:
    """Create the benchmark database if it is missing (via the ``postgres`` database)."""
    name = pg_database(n)
    with pg_connect(f"{PG_HOST_URL}/postgres") as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f"CREATE DATABASE {name}")
            print(f"Created PostgreSQL database {name}.")


def pg_store_available() -> bool:
    """Tell whether Hopper has its PostgreSQL store (hopper.store.postgres) yet."""
    return importlib.util.find_spec("hopper.store.postgres") is not None


def _pg_meta(conn: Any) -> dict[str, Any] | None:
    exists = conn.execute("SELECT to_regclass(%s)", (PG_META_TABLE,)).fetchone()[0]
    if exists is None:
        return None
    row = conn.execute(f"SELECT meta FROM {PG_META_TABLE}").fetchone()
    return None if row is None else dict(row[0])


def _pg_migrate(conn: Any, url: str) -> str:
    """Create Hopper's schema with Hopper's own PostgreSQL store."""
    from hopper.store import open_event_store

    store = open_event_store(StoreSettings(backend="postgres", postgres_url=url))
    try:
        store.migrate()
    finally:
        store.close()
    return "hopper"


def pg_cleanup(meta: dict[str, Any]) -> None:
    """Delete every row added after seeding (earlier benchmark runs), then vacuum."""
    with pg_connect(pg_url(meta["events"])) as conn:
        raw = conn.execute(
            "DELETE FROM raw_events WHERE app_time_ms > %s", (meta["last_ms"],)
        ).rowcount
        reader = conn.execute(
            "DELETE FROM reader_events WHERE id > %s", (meta["max_reader_id"],)
        ).rowcount
        errors = conn.execute("DELETE FROM reader_events_errors").rowcount
        if raw or reader or errors:
            conn.execute("VACUUM (ANALYZE) raw_events, reader_events, reader_events_errors")
            print(
                f"  removed rows of earlier runs: {raw:,} raw, {reader:,} reader, {errors:,} errors"
            )


def seed_postgres(n: int, *, force: bool = False) -> dict[str, Any]:
    """Make ``hopper_bench`` hold exactly the N seeded events; return the seed's metadata."""
    ensure_pg_database(n)
    url = pg_url(n)
    with pg_connect(url) as conn:
        meta = None if force else _pg_meta(conn)
        stale = meta is not None and meta.get("schema") != "hopper" and pg_store_available()
        if (
            meta is not None
            and meta.get("events") == n
            and meta.get("format") == SEED_FORMAT
            and not stale
        ):
            pg_cleanup(meta)
            return meta
        print(f"Seeding PostgreSQL {pg_database(n)} with {n:,} events...", flush=True)
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
        schema = _pg_migrate(conn, url)
    seeded_at = now_ms()
    first_ms, last_ms = seeded_at - SEED_GAP_MS - SEED_SPAN_MS, seeded_at - SEED_GAP_MS
    progress = Progress("postgres seed", n)
    done = 0
    with pg_connect(url, autocommit=False) as conn:
        conn.execute("SET synchronous_commit = off")  # seeding only; the server keeps its own
        for reader_rows, raw_rows in seed_chunks(n, first_ms, last_ms):
            with conn.cursor() as cur:
                copy_rows(cur, raw_rows, reader_rows)
            conn.commit()
            done += len(raw_rows)
            progress.update(done)
        progress.update(done, force=True)
    with pg_connect(url) as conn:
        print("  VACUUM ANALYZE...", flush=True)
        conn.execute("VACUUM (ANALYZE) raw_events, reader_events")
        max_id = conn.execute("SELECT coalesce(max(id), 0) FROM reader_events").fetchone()[0]
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        meta = {
            "store": "postgres",
            "events": n,
            "format": SEED_FORMAT,
            "schema": schema,
            "first_ms": first_ms,
            "last_ms": last_ms,
            "max_reader_id": int(max_id),
            "seeded_at_ms": seeded_at,
            "seconds": round(time.perf_counter() - progress.started, 1),
            "bytes": int(size),
        }
        conn.execute(f"CREATE TABLE {PG_META_TABLE} (meta JSONB NOT NULL)")
        conn.execute(f"INSERT INTO {PG_META_TABLE} (meta) VALUES (%s)", (json.dumps(meta),))
    print(f"Seeded {n:,} events in {meta['seconds']} s ({meta['bytes'] / 1e9:.2f} GB).", flush=True)
    return meta


def copy_rows(
    cur: Any, raw_rows: Sequence[tuple[Any, ...]], reader_rows: Sequence[tuple[Any, ...]]
) -> None:
    """COPY raw_events and reader_events rows through one cursor (caller commits)."""
    with cur.copy(COPY_RAW) as copy:
        for row in raw_rows:
            copy.write_row(row)
    with cur.copy(COPY_READER) as copy:
        for row in reader_rows:
            copy.write_row(row)


SEEDERS: dict[str, Callable[..., dict[str, Any]]] = {
    "sqlite": seed_sqlite,
    "postgres": seed_postgres,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=sorted(SEEDERS), action="append")
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    parser.add_argument("--force", action="store_true", help="reseed even if a seed exists")
    args = parser.parse_args(argv)
    for store in args.store or ["sqlite"]:
        meta = SEEDERS[store](args.events, force=args.force)
        print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
