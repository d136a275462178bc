"""dbt-style processing cases: fixture events and reference rows in, hand-written tables out.

Each folder of ``tests/fixtures/processing/`` is a case:

    case.json        {"settings": {...[processing] overrides}, "school_id": default,
                      "arrivals": ["2026-03-02T12:00:00Z", ...]}   the clock of each arrival
    reference.json   rows of the ec_* tables, by table
    events.jsonl     one event a line, in the JSON shape ``hopper.client.event_from_json``
                     reads, with "at" (ISO time) for app_time_ms and "arrival" (1 by
                     default): the events of arrival N are committed through the event
                     store with received_ms = arrival N's clock, then the job runs
    expected/T.csv   the expected rows of table T after the last arrival (the columns in
                     the header only; ISO times stand for epoch ms, NULL for NULL, an empty
                     cell for "", "*" for any value), in key order
"""

from __future__ import annotations

import csv
import json
import math
import random
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hopper.client import encode_batch, event_from_json
from hopper.config import HopperSettings, StoreSettings, load_settings
from hopper.edge.processing import run_processing
from hopper.events import decode_batch
from hopper.sinks.base import PendingWrite
from hopper.store import open_event_store
from hopper.store.analytics import ANALYTICS_TABLES
from hopper.testing import FrozenClock

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "processing"
CASES = sorted(path.name for path in FIXTURES.iterdir() if (path / "case.json").is_file())
ANY = "*"

# Enough of the reference tables for processing, as the contract names their columns; the
# import's migration (5) creates the real ones, which these statements leave alone.
REFERENCE_DDL = (
    "CREATE TABLE IF NOT EXISTS ec_schools (school_id TEXT PRIMARY KEY, name TEXT, "
    "time_zone TEXT NOT NULL DEFAULT 'UTC')",
    "CREATE TABLE IF NOT EXISTS ec_books (book_id TEXT PRIMARY KEY, title TEXT, "
    "page_count INTEGER, language TEXT)",
    "CREATE TABLE IF NOT EXISTS ec_learning_paths (lp_id TEXT PRIMARY KEY, title TEXT)",
    "CREATE TABLE IF NOT EXISTS ec_lp_steps (lp_id TEXT NOT NULL, step_id TEXT NOT NULL, "
    "position INTEGER, title TEXT, PRIMARY KEY (lp_id, step_id))",
)


def epoch_ms(text: str) -> int:
    """Return the epoch ms of an ISO time such as ``2026-03-02T08:00:00Z``."""
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


@dataclass
class Case:
    """One fixture folder, read."""

    name: str
    settings: dict[str, Any]
    arrivals: list[int]
    reference: dict[str, list[dict[str, Any]]]
    events: list[tuple[int, dict[str, Any]]]  # (arrival, event_from_json object)
    expected: dict[str, tuple[list[str], list[list[str]]]] = field(default_factory=dict)


def load_case(name: str) -> Case:
    """Read a case folder."""
    folder = FIXTURES / name
    spec = json.loads((folder / "case.json").read_text())
    reference_file = folder / "reference.json"
    reference = json.loads(reference_file.read_text()) if reference_file.is_file() else {}
    events = []
    for line in (folder / "events.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        obj = json.loads(line)
        arrival = int(obj.pop("arrival", 1))
        obj["app_time_ms"] = epoch_ms(obj.pop("at"))
        obj.setdefault("device_id", f"tab-{obj['username']}")
        obj.setdefault("school_id", spec.get("school_id", ""))
        events.append((arrival, obj))
    expected = {}
    for path in sorted((folder / "expected").glob("*.csv")):
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
        expected[path.stem] = (rows[0], rows[1:])
    return Case(
        name,
        spec.get("settings", {}),
        [epoch_ms(t) for t in spec["arrivals"]],
        reference,
        events,
        expected,
    )


def _connect(store: StoreSettings) -> Any:
    if store.backend == "postgres":
        import psycopg

        return psycopg.connect(store.postgres_url.get_secret_value(), autocommit=True)
    return sqlite3.connect(store.sqlite_path, isolation_level=None)


def _marker(store: StoreSettings) -> str:
    return "%s" if store.backend == "postgres" else "?"


def insert_reference(store: StoreSettings, reference: dict[str, list[dict[str, Any]]]) -> None:
    """Insert reference rows, filling the import's bookkeeping columns when it has them."""
    conn = _connect(store)
    try:
        for ddl in REFERENCE_DDL:
            conn.execute(ddl)
        for table, rows in reference.items():
            cursor = conn.execute(f"SELECT * FROM {table} WHERE 1 = 0")
            columns = [d[0] for d in cursor.description]
            for row in rows:
                values = dict(row)
                if "row_hash" in columns:
                    values.setdefault("row_hash", b"\0")
                if "changed_ms" in columns:
                    values.setdefault("changed_ms", 0)
                names = ", ".join(values)
                marks = ", ".join([_marker(store)] * len(values))
                conn.execute(
                    f"INSERT INTO {table} ({names}) VALUES ({marks})", tuple(values.values())
                )
    finally:
        conn.close()


def pending_write(objs: list[dict[str, Any]], now_ms: int) -> PendingWrite:
    """The events of JSON objects, decoded as ingest decodes them, received at ``now_ms``."""
    events, rejections = decode_batch(encode_batch([event_from_json(o) for o in objs]))
    assert not rejections
    return PendingWrite("http", now_ms, events)


def commit_events(store_settings: StoreSettings, objs: list[dict[str, Any]], now_ms: int) -> int:
    """Commit events through the event store as ingest does; return how many were new."""
    store = open_event_store(store_settings)
    try:
        stored = store.commit([pending_write(objs, now_ms)])
    finally:
        store.close()
    return len(stored[0])


def settings_for(case: Case, store: StoreSettings) -> HopperSettings:
    """The case's settings on the given store."""
    return load_settings(store=store.model_dump(), processing=case.settings)


@dataclass
class Outcome:
    """What running a case left behind."""

    summaries: list[str]
    stored: list[int]  # events new per arrival


def prepare_store(case: Case, store: StoreSettings) -> None:
    """Migrate the store and insert the case's reference rows."""
    migrating = open_event_store(store)
    try:
        migrating.migrate()
    finally:
        migrating.close()
    insert_reference(store, case.reference)


def run_case(case: Case, store: StoreSettings, *, at_once: bool = False) -> Outcome:
    """Migrate, insert the reference rows, then commit each arrival and run the job.

    ``at_once`` commits every event in one arrival (the last clock): the one-shot result
    that incremental runs must equal.
    """
    settings = settings_for(case, store)
    prepare_store(case, store)
    outcome = Outcome([], [])
    arrivals = [case.arrivals[-1]] if at_once else case.arrivals
    for number, now_ms in enumerate(arrivals, start=1):
        objs = [obj for arrival, obj in case.events if at_once or arrival == number]
        outcome.stored.append(commit_events(store, objs, now_ms) if objs else 0)
        outcome.summaries.append(run_processing(settings, FrozenClock(now_ms)))
    return outcome


def _keys(table: str) -> list[str]:
    by_name = {t.name: t for t in ANALYTICS_TABLES}
    return [c.name for c in by_name[table].primary_key.columns]


def read_table(
    store: StoreSettings, table: str, columns: list[str] | None = None
) -> list[dict[str, Any]]:
    """Return a table's rows (all columns, or those given) in key order."""
    conn = _connect(store)
    try:
        keys = _keys(table)
        cols = ", ".join([*keys, *(c for c in columns if c not in keys)]) if columns else "*"
        cursor = conn.execute(f"SELECT {cols} FROM {table}")  # noqa: S608
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        conn.close()
    # Sorted here, by code point: PostgreSQL's ORDER BY would follow the database's collation.
    rows.sort(key=lambda row: tuple(row[k] for k in keys))
    if columns:
        rows = [{c: row[c] for c in columns} for row in rows]
    return rows


def snapshot(store: StoreSettings, *, with_run_id: bool = False) -> dict[str, list[Any]]:
    """Every derived table but an_runs, in key order (without run_id unless asked)."""
    result = {}
    for table in ANALYTICS_TABLES:
        if table.name == "an_runs":
            continue
        rows = read_table(store, table.name)
        result[table.name] = [
            {k: v for k, v in row.items() if with_run_id or k != "run_id"} for row in rows
        ]
    return result


def _expected_value(text: str) -> Any:
    if text == "NULL":
        return None
    if text == ANY:
        return ANY
    if "T" in text and text.endswith("Z") and text[:4].isdigit():
        return epoch_ms(text)
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def same_value(actual: Any, expected: Any) -> bool:
    """Compare one value: floats to 1e-9 (the engines may add in another order)."""
    if expected is ANY or expected == ANY:
        return True
    if isinstance(expected, float) or isinstance(actual, float):
        if actual is None or expected is None:
            return actual is expected
        return math.isclose(float(actual), float(expected), rel_tol=1e-9, abs_tol=1e-12)
    return bool(actual == expected)


def mismatches(store: StoreSettings, case: Case) -> list[str]:
    """Compare every expected table with the store's; describe each difference."""
    problems = []
    for table, (columns, rows) in case.expected.items():
        actual = read_table(store, table, columns)
        expected = [[_expected_value(v) for v in row] for row in rows]
        if len(actual) != len(expected):
            problems.append(f"{table}: {len(actual)} rows, expected {len(expected)}: {actual}")
            continue
        for number, (got, want) in enumerate(zip(actual, expected, strict=True), start=1):
            for column, value in zip(columns, want, strict=True):
                if not same_value(got[column], value):
                    problems.append(
                        f"{table} row {number} ({want[:3]}): {column} = {got[column]!r}, "
                        f"expected {value!r}"
                    )
    return problems


def same_snapshots(a: dict[str, list[Any]], b: dict[str, list[Any]]) -> list[str]:
    """Describe the differences between two snapshots (floats to 1e-9)."""
    problems = []
    for table in a:
        if len(a[table]) != len(b[table]):
            problems.append(f"{table}: {len(a[table])} rows against {len(b[table])}")
            continue
        for row_a, row_b in zip(a[table], b[table], strict=True):
            for column, value in row_a.items():
                other = row_b[column]
                if isinstance(value, bytes | memoryview) or isinstance(other, bytes | memoryview):
                    value, other = bytes(value), bytes(other)
                if not same_value(value, other):
                    problems.append(f"{table} {row_a}: {column} {value!r} against {other!r}")
    return problems


def random_case(seed: int, *, students: int = 3, days: int = 4, events: int = 160) -> Case:
    """A case of random reading over a few days, arriving late and out of order.

    Books of 5 pages, of none and of unknown length; pages 0 to 7 (outside the book too),
    views from 1 s to 4 min apart (clipped and gap-split), session starts and ends; each
    event arrives on its own day's arrival, or one in seven on a later one (tablets offline).
    The expected tables are not written: incremental runs must equal one run.
    """
    rng = random.Random(seed)
    start = epoch_ms("2026-03-02T08:00:00Z")
    books = ["book-a", "book-b", "book-c"]  # 5 pages, 0 pages, not in ec_books
    out: list[tuple[int, dict[str, Any]]] = []
    clock = {(s, d): start + d * 86_400_000 for s in range(students) for d in range(days)}
    for _ in range(events):
        student, day = rng.randrange(students), rng.randrange(days)
        clock[student, day] += rng.choice((1_000, 6_000, 30_000, 90_000, 150_000, 240_000))
        kind = rng.choices(("page_viewed", "app_session_started", "app_session_ended"), (8, 1, 1))
        obj: dict[str, Any] = {
            "type": kind[0],
            "username": f"s{student}",
            "app_time_ms": clock[student, day],
            "device_id": f"tab-{student}",
            "school_id": "sch-utc",
            "payload": {},
        }
        if kind[0] == "page_viewed":
            obj["payload"] = {
                "book_id": rng.choice(books),
                "page": rng.randrange(8),
                "duration_ms": rng.choice((2_000, 20_000, 200_000)),
            }
        late = rng.random() < 0.15
        out.append((rng.randint(day + 1, days) if late else day + 1, obj))
    return Case(
        f"random-{seed}",
        {},
        [start + d * 86_400_000 + 12 * 3_600_000 for d in range(days)],
        {
            "ec_schools": [{"school_id": "sch-utc", "name": "UTC school", "time_zone": "UTC"}],
            "ec_books": [
                {"book_id": "book-a", "title": "A", "page_count": 5},
                {"book_id": "book-b", "title": "B", "page_count": 0},
            ],
        },
        out,
    )
