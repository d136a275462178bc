"""Benchmark of ``hopper job process``: a full recompute of N stored events, then a new day.

The stored events are a simulated school of 400 students (``hopper.simulate.school``:
sessions, page views, flashcards, learning-path steps, CAM heartbeats) paced as students
read (a page stays up for its ``duration_ms``, breaks between app sessions), one school day
after another in the school's zone (Europe/Rome), with reference data (books with page
counts, learning-path steps). Seeded straight into the store with Hopper's row builders
(as ``bench/seed.py`` does; cached), then per store:

1. full recompute of the N events (``run_processing`` on a store with no run yet);
2. a new school day arrives through ``EventStore.commit`` (as ingest stores it): D events
   of today, and 2% of them late (tablets offline for 1-4 days: app times of earlier days);
3. incremental run; 4. the same run again (nothing new).

Each is printed beside a baseline measured in the same run on the same store: one plain
SQL statement computing the core aggregate (per student and day: events and reading time,
each page's time the gap to the next event clipped to [5 s, 120 s]), over all events (full)
or over the new rows only (incremental).

    .venv/bin/python bench/bench_processing.py                 # 10M stored, 500k new, both stores
    .venv/bin/python bench/bench_processing.py --quick         # 200k stored, 20k new
    .venv/bin/python bench/bench_processing.py --stores sqlite --events 10000000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from seed import (
    INSERT_RAW,
    INSERT_READER,
    PG_HOST_URL,
    RESULTS_DIR,
    Progress,
    copy_rows,
    pg_connect,
    remove_sqlite,
    rows_of,
)

from hopper.config import StoreSettings, load_settings
from hopper.edge.processing import run_processing
from hopper.events import decode_batch, encode_batch
from hopper.events._pb import events_pb2 as pb
from hopper.simulate.school import BOOKS, PATHS, SimulatedSchool, Student
from hopper.sinks.base import PendingWrite
from hopper.store import open_event_store
from hopper.store.analytics import ANALYTICS_TABLES
from hopper.testing import FrozenClock

FORMAT = 1  # bump when what seeding writes changes
SCHOOL = "school-bench"
ZONE = "Europe/Rome"
FIRST_DAY = date(2026, 2, 2)  # a Monday
DAYS = 30
STUDENTS = 400
DAY_MS = 86_400_000
LATE_SHARE = 0.02
PG_DB = "hopper_bench_processing"
PG_META = "hopper_bench_processing_seed"
CHUNK = 50_000

BASELINE = """
SELECT t.username, t.day, COUNT(*) AS events,
       SUM(CASE WHEN t.gap IS NULL OR t.gap > 300000 OR t.gap < 5000 THEN 0
                WHEN t.gap > 120000 THEN 120000 ELSE t.gap END) AS reading_ms
FROM (
  SELECT e.username, e.app_time_ms / 86400000 AS day,
         LEAD(e.app_time_ms) OVER (PARTITION BY e.username
                                   ORDER BY e.app_time_ms, e.id) - e.app_time_ms AS gap
  FROM reader_events e
  WHERE e.event_type <> 'cam_status' AND e.id > {from_id}
) t
GROUP BY t.username, t.day
"""


# -- a school paced like readers ---------------------------------------------------------


def _day_start_ms(day: date) -> int:
    """08:00 in the school's zone on ``day``, in UTC ms."""
    moment = datetime(day.year, day.month, day.day, 8, tzinfo=ZoneInfo(ZONE))
    return int(moment.timestamp() * 1000)


class PacedSchool:
    """Students whose events are spaced as reading, reviewing and breaks take time."""

    def __init__(self, students: int, seed: int) -> None:
        self.school = SimulatedSchool(students, school_id=SCHOOL, seed=seed)
        self.rng = random.Random(seed)

    def student_day(self, student: Student, day: date, count: int) -> list[bytes]:
        """``count`` events of one student on one school day, from about 08:00 local."""
        rng = self.rng
        at = _day_start_ms(day) + rng.randrange(0, 30 * 60_000)
        raws = []
        for _ in range(count):
            event = student.next_event(at)
            at = event.app_time_ms
            raws.append(event.SerializeToString())
            at += self._gap(event)
        return raws

    def _gap(self, event: pb.Event) -> int:
        rng = self.rng
        kind = event.WhichOneof("payload")
        if kind == "page_viewed":
            return max(1000, min(event.page_viewed.duration_ms, 600_000))
        if kind == "app_session_ended":
            return rng.randrange(5 * 60_000, 30 * 60_000)
        if kind == "flashcard_reviewed":
            return max(1000, event.flashcard_reviewed.response_ms + rng.randrange(500, 3000))
        return rng.randrange(1000, 8000)


def _new_day_start_ms() -> int:
    return _day_start_ms(FIRST_DAY + timedelta(days=DAYS))


def _per_student_day(total: int, students: int, days: int) -> list[int]:
    base, extra = divmod(total, students * days)
    return [base + (1 if i < extra else 0) for i in range(students * days)]


def seed_events(n: int) -> Iterator[list[bytes]]:
    """Yield the seeded events, one student-day at a time, day by day."""
    school = PacedSchool(STUDENTS, seed=21)
    counts = _per_student_day(n, STUDENTS, DAYS)
    for d in range(DAYS):
        day = FIRST_DAY + timedelta(days=d)
        for s, student in enumerate(school.school.students):
            count = counts[d * STUDENTS + s]
            if count:
                yield school.student_day(student, day, count)


def new_day_events(n: int) -> list[bytes]:
    """The new school day (the day after the seed), 2% of it late: earlier days' events."""
    school = PacedSchool(STUDENTS, seed=77)
    today = FIRST_DAY + timedelta(days=DAYS)
    late = int(n * LATE_SHARE)
    raws: list[bytes] = []
    for count, student in zip(
        _per_student_day(n - late, STUDENTS, 1), school.school.students, strict=True
    ):
        raws += school.student_day(student, today, count)
    offline = school.school.students[: max(1, STUDENTS // 50)]  # 2% of the tablets
    per_day = late // (len(offline) * 4) + 1
    for student in offline:
        for back in range(4, 0, -1):
            raws += school.student_day(student, today - timedelta(days=back), per_day)
    return raws[:n]


def reference_rows() -> dict[str, list[dict[str, Any]]]:
    """The school, its books (30 pages each) and its learning paths (5 steps each)."""
    return {
        "ec_schools": [{"school_id": SCHOOL, "name": "Bench school", "time_zone": ZONE}],
        "ec_books": [{"book_id": b, "title": b, "page_count": 30, "language": "it"} for b in BOOKS],
        "ec_learning_paths": [{"lp_id": p, "title": p} for p in PATHS],
        "ec_lp_steps": [
            {"lp_id": p, "step_id": f"{p}-step-{n}", "position": n, "title": str(n)}
            for p in PATHS
            for n in range(1, 6)
        ],
    }


def insert_reference(conn: Any, marker: str) -> None:
    """Insert the reference rows, filling the import's bookkeeping columns."""
    for table, rows in reference_rows().items():
        columns = [d[0] for d in conn.execute(f"SELECT * FROM {table} WHERE 1 = 0").description]
        for row in rows:
            values = {**row, "row_hash": b"\0", "changed_ms": 0}
            values = {k: v for k, v in values.items() if k in columns}
            conn.execute(
                f"INSERT INTO {table} ({', '.join(values)}) "
                f"VALUES ({', '.join([marker] * len(values))})",
                tuple(values.values()),
            )


def _chunks(n: int) -> Iterator[list[bytes]]:
    pending: list[bytes] = []
    for raws in seed_events(n):
        pending += raws
        if len(pending) >= CHUNK:
            yield pending
            pending = []
    if pending:
        yield pending


def _received(raws: Sequence[bytes]) -> list[int]:
    # Tablets upload within a minute of the event (received_ms matters only for display).
    return [pb.Event.FromString(raw).app_time_ms + 30_000 for raw in raws]


# -- seeding (cached) ----------------------------------------------------------------------


def sqlite_seed_path(n: int) -> Path:
    return RESULTS_DIR / f"processing-seed-sqlite-{n}-v{FORMAT}.db"


def seed_sqlite(n: int) -> dict[str, Any]:
    """Build (or reuse) the cached SQLite seed of N events; return its metadata."""
    path = sqlite_seed_path(n)
    meta_path = path.with_name(path.name + ".json")
    if path.is_file() and meta_path.is_file():
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        return meta
    partial = path.with_name(path.name + ".partial")
    remove_sqlite(partial)
    store = open_event_store(StoreSettings(backend="sqlite", sqlite_path=partial))
    store.migrate()  # Hopper's schema, the processing index included
    store.close()
    conn = sqlite3.connect(partial, isolation_level=None)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1000000")
    insert_reference(conn, "?")
    print(f"Seeding SQLite {path.name} with {n:,} paced events...", flush=True)
    progress = Progress("sqlite seed", n)
    done = 0
    for raws in _chunks(n):
        reader_rows, raw_rows = rows_of(raws, _received(raws))
        conn.execute("BEGIN")
        conn.executemany(INSERT_RAW, raw_rows)
        conn.executemany(INSERT_READER, reader_rows)
        conn.execute("COMMIT")
        done += len(raws)
        progress.update(done)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    partial.rename(path)
    meta = {"events": n, "format": FORMAT, "max_reader_id": n, "bytes": path.stat().st_size}
    meta_path.write_text(json.dumps(meta))
    return meta


def pg_url(n: int) -> str:
    return f"{PG_HOST_URL}/{PG_DB if n == 10_000_000 else f'{PG_DB}_{n}'}"


def seed_postgres(n: int) -> dict[str, Any]:
    """Make the benchmark database hold exactly the N seeded events (cached)."""
    url = pg_url(n)
    name = url.rpartition("/")[2]
    with pg_connect(f"{PG_HOST_URL}/postgres") as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f"CREATE DATABASE {name}")
    with pg_connect(url) as conn:
        if conn.execute("SELECT to_regclass(%s)", (PG_META,)).fetchone()[0] is not None:
            meta: dict[str, Any] = dict(conn.execute(f"SELECT meta FROM {PG_META}").fetchone()[0])
            if meta.get("events") == n and meta.get("format") == FORMAT:
                return meta
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    store = open_event_store(StoreSettings(backend="postgres", postgres_url=url))
    store.migrate()
    store.close()
    print(f"Seeding PostgreSQL {name} with {n:,} paced events...", flush=True)
    progress = Progress("postgres seed", n)
    done = 0
    with pg_connect(url, autocommit=False) as conn:
        insert_reference(conn, "%s")
        conn.execute("SET synchronous_commit = off")
        for raws in _chunks(n):
            reader_rows, raw_rows = rows_of(raws, _received(raws))
            with conn.cursor() as cur:
                copy_rows(cur, raw_rows, reader_rows)
            conn.commit()
            done += len(raws)
            progress.update(done)
    with pg_connect(url) as conn:
        conn.execute("VACUUM (ANALYZE) raw_events, reader_events")
        max_id = conn.execute("SELECT max(id) FROM reader_events").fetchone()[0]
        meta = {"events": n, "format": FORMAT, "max_reader_id": int(max_id)}
        conn.execute(f"CREATE TABLE {PG_META} (meta JSONB NOT NULL)")
        conn.execute(f"INSERT INTO {PG_META} (meta) VALUES (%s)", (json.dumps(meta),))
    return meta


def reset_postgres(n: int, meta: dict[str, Any]) -> None:
    """Delete what earlier benchmark runs added: new events and every derived row."""
    with pg_connect(pg_url(n)) as conn:
        conn.execute("DELETE FROM reader_events WHERE id > %s", (meta["max_reader_id"],))
        # Seeded rows were received 30 s after their app time; the new day's at its end.
        conn.execute("DELETE FROM raw_events WHERE received_ms >= %s", (_new_day_start_ms(),))
        for table in ANALYTICS_TABLES:
            conn.execute(f"TRUNCATE {table.name}")
        conn.execute("VACUUM (ANALYZE) raw_events, reader_events")


# -- one store's run -----------------------------------------------------------------------


@dataclass
class Timings:
    """The run's figures for one store."""

    store: str
    events: int
    new_events: int
    seconds: dict[str, float] = field(default_factory=dict)
    split: dict[str, tuple[float, float]] = field(default_factory=dict)  # computing, writing
    summaries: dict[str, str] = field(default_factory=dict)


class _RunLog(logging.Handler):
    """Keeps the computing/writing split the processing logs for each run."""

    def __init__(self) -> None:
        super().__init__()
        self.split: tuple[float, float] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if (
            record.levelno == logging.INFO
            and record.getMessage().startswith("Processing run")
            and isinstance(record.args, tuple)
        ):
            self.split = (float(record.args[-2]), float(record.args[-1]))  # type: ignore[arg-type]


def _baseline(store: StoreSettings, from_id: int) -> float:
    sql = BASELINE.format(from_id=int(from_id))
    started = time.perf_counter()
    if store.backend == "postgres":
        with pg_connect(store.postgres_url.get_secret_value()) as conn:
            conn.execute(sql).fetchall()
    else:
        conn = sqlite3.connect(store.sqlite_path)
        try:
            conn.execute(sql).fetchall()
        finally:
            conn.close()
    return time.perf_counter() - started


def run_store(backend: str, n: int, day_events: int, work: Path) -> Timings:
    """Seed (or reuse), then measure the full, incremental and repeated runs on one store."""
    if backend == "sqlite":
        meta = seed_sqlite(n)
        path = work / "processing.db"
        remove_sqlite(path)
        shutil.copyfile(sqlite_seed_path(n), path)
        os.sync()
        store = StoreSettings(backend="sqlite", sqlite_path=path)
    else:
        meta = seed_postgres(n)
        reset_postgres(n, meta)
        store = StoreSettings(backend="postgres", postgres_url=pg_url(n))
    settings = load_settings(store=store.model_dump())
    end_of_seed = _day_start_ms(FIRST_DAY + timedelta(days=DAYS - 1)) + 10 * 3_600_000
    timings = Timings(backend, n, day_events)
    log = _RunLog()
    logging.getLogger("hopper.edge.processing.run").addHandler(log)
    logging.getLogger("hopper.edge.processing.run").setLevel(logging.INFO)

    def measure(label: str, clock_ms: int) -> None:
        log.split = None
        started = time.perf_counter()
        summary = run_processing(settings, FrozenClock(clock_ms))
        timings.seconds[label] = time.perf_counter() - started
        timings.summaries[label] = summary
        if log.split is not None:
            timings.split[label] = log.split
        print(f"  {backend} {label}: {timings.seconds[label]:.1f} s  {summary}", flush=True)

    timings.seconds["baseline full"] = _baseline(store, 0)
    print(f"  {backend} baseline full: {timings.seconds['baseline full']:.1f} s", flush=True)
    measure("full", end_of_seed)

    raws = new_day_events(day_events)
    today = FIRST_DAY + timedelta(days=DAYS)
    now_ms = _day_start_ms(today) + 10 * 3_600_000  # 18:00: the school day is over
    event_store = open_event_store(store)
    started = time.perf_counter()
    try:
        for start in range(0, len(raws), 5000):
            events, rejections = decode_batch(encode_batch(raws[start : start + 5000]))
            assert not rejections
            event_store.commit([PendingWrite("http", now_ms, events)])
    finally:
        event_store.close()
    timings.seconds["commit new day"] = time.perf_counter() - started
    timings.seconds["baseline incremental"] = _baseline(store, int(meta["max_reader_id"]))
    measure("incremental", now_ms)
    measure("again", now_ms)
    if backend == "sqlite":
        remove_sqlite(store.sqlite_path)
    return timings


def report(results: list[Timings]) -> str:
    lines = [
        "| store | run | events | seconds | computing / writing s | goal | baseline |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t in results:
        for label, events, goal, baseline in (
            ("full", t.events, 120.0, t.seconds["baseline full"]),
            ("incremental", t.new_events, 10.0, t.seconds["baseline incremental"]),
            ("again", 0, None, None),
        ):
            seconds = t.seconds[label]
            split = t.split.get(label)
            split_text = f"{split[0]:.1f} / {split[1]:.1f}" if split else "-"
            verdict = "-"
            if goal is not None:
                verdict = f"{goal:.0f} s: {'met' if seconds <= goal else 'NOT met'}"
            base = "-" if baseline is None else f"{baseline:.1f} s"
            lines.append(
                f"| {t.store} | {label} | {events:,} | {seconds:.1f} | {split_text} "
                f"| {verdict} | {base} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--day-events", type=int, default=500_000)
    parser.add_argument("--quick", action="store_true", help="200k stored, 20k new")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.day_events = 200_000, 20_000
    logging.basicConfig(level=logging.WARNING)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    work = RESULTS_DIR / f"processing-{stamp}{'-quick' if args.quick else ''}"
    work.mkdir(parents=True, exist_ok=True)
    results = [
        run_store(backend, args.events, args.day_events, work) for backend in args.stores.split(",")
    ]
    text = report(results)
    print(text)
    (work / "results.txt").write_text(text + "\n")
    (work / "results.json").write_text(
        json.dumps([t.__dict__ for t in results], indent=2, default=str)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
