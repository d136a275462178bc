"""The EventStore contract, run against every backend (SQLite file, real PostgreSQL)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from hopper.config import HopperSettings, load_settings
from hopper.errors import BackendUnavailable, HopperError
from hopper.events import (
    Event,
    Rejection,
    RejectReason,
    content_hash,
    decode_batch,
    encode_batch,
)
from hopper.jobs.registry import purge_errors as purge_errors_job
from hopper.store import TABLES, EventStore, PendingWrite, StoredError, open_event_store
from hopper.store.migrations import MIGRATIONS
from hopper.testing import NOW_MS, FrozenClock, make_batch, page_view

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000

# A failed commit raises; which class depends on the backend and on the failure.
COMMIT_FAILURES = (HopperError, sqlite3.Error, psycopg.Error)


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> HopperSettings:
    """Settings naming a fresh, empty store of the parametrized backend."""
    if request.param == "sqlite":
        return load_settings(store={"backend": "sqlite", "sqlite_path": tmp_path / "events.db"})
    url = request.getfixturevalue("postgres_url")
    return load_settings(store={"backend": "postgres", "postgres_url": url})


@pytest.fixture
def open_store(settings: HopperSettings) -> Iterator[Callable[[], EventStore]]:
    """Open instances of the store (not migrated); all are closed after the test."""
    opened: list[EventStore] = []

    def _open() -> EventStore:
        store = open_event_store(settings.store)
        opened.append(store)
        return store

    yield _open
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[[], EventStore]) -> EventStore:
    """A migrated store."""
    opened = open_store()
    opened.migrate()
    return opened


def query(settings: HopperSettings, sql: str) -> list[tuple[Any, ...]]:
    """Read the store's tables through a connection of the test's own."""
    if settings.store.backend == "sqlite":
        with closing(sqlite3.connect(settings.store.sqlite_path)) as conn:
            return conn.execute(sql).fetchall()
    with psycopg.connect(settings.store.postgres_url.get_secret_value()) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[arg-type]


def events(count: int, *, start: int = 0) -> list[Event]:
    """Decode ``count`` distinct valid events."""
    decoded, rejections = decode_batch(make_batch(count, start=start))
    assert len(decoded) == count and not rejections
    return decoded


def rejections(*raws: bytes) -> list[Rejection]:
    """Decode undecodable event bytes into rejections, as the decode stage does."""
    decoded, rejected = decode_batch(encode_batch(list(raws)))
    assert not decoded and len(rejected) == len(raws)
    return rejected


def test_migrate_applies_every_migration_once(open_store: Callable[[], EventStore]) -> None:
    first = open_store()
    assert first.migrate() == len(MIGRATIONS)
    assert first.migrate() == 0
    assert open_store().migrate() == 0
    assert all(first.count(table) == 0 for table in TABLES)


def test_concurrent_migrators_apply_each_migration_once(
    open_store: Callable[[], EventStore],
) -> None:
    stores = [open_store() for _ in range(3)]
    barrier = threading.Barrier(len(stores))
    applied: list[int] = []
    failures: list[BaseException] = []

    def migrate(store: EventStore) -> None:
        barrier.wait(timeout=10)
        try:
            applied.append(store.migrate())
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=migrate, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert failures == []
    assert len(applied) == len(stores)
    assert sum(applied) == len(MIGRATIONS)  # each migration ran once, whoever ran it


def test_commit_stores_parsed_columns_and_exact_raw_bytes(
    store: EventStore, settings: HopperSettings
) -> None:
    batch = events(3)
    stored = store.commit([PendingWrite("http", NOW_MS + 5, batch)])

    assert stored == [batch]
    assert store.count("reader_events") == 3
    assert store.count("raw_events") == 3
    raw_rows = query(
        settings, "SELECT app_time_ms, hash, received_ms, raw FROM raw_events ORDER BY app_time_ms"
    )
    assert [(t, bytes(h), r, bytes(raw)) for t, h, r, raw in raw_rows] == [
        (e.app_time_ms, e.hash, NOW_MS + 5, e.raw) for e in batch
    ]
    reader_rows = query(
        settings,
        "SELECT app_time_ms, received_ms, username, device_id, school_id, platform, "
        "event_type, book_id, page, payload, hash FROM reader_events ORDER BY id",
    )
    for row, event in zip(reader_rows, batch, strict=True):
        *columns, payload, digest = row
        assert columns == [
            event.app_time_ms,
            NOW_MS + 5,
            "student0001",
            "tablet-0001",
            "school-001",
            "android",
            "page_viewed",
            "book-001",
            event.payload["page"],
        ]
        # SQLite keeps JSON text, PostgreSQL JSONB: both must round-trip the payload.
        assert (orjson.loads(payload) if isinstance(payload, str) else payload) == event.payload
        assert bytes(digest) == event.hash


def test_event_without_book_or_page_has_null_columns(
    store: EventStore, settings: HopperSettings
) -> None:
    from hopper.client import make_event

    raw = make_event("app_session_started", username="s1", device_id="d1", app_time_ms=NOW_MS)
    decoded, _ = decode_batch(encode_batch([raw]))
    assert store.commit([PendingWrite("http", NOW_MS, decoded)]) == [decoded]
    assert query(settings, "SELECT event_type, book_id, page FROM reader_events") == [
        ("app_session_started", None, None)
    ]


def test_duplicates_across_commits_are_stored_once(store: EventStore) -> None:
    first = events(3)
    assert store.commit([PendingWrite("http", NOW_MS, first)]) == [first]

    again = events(4)  # the same three events (same raw bytes) and one new
    assert store.commit([PendingWrite("websocket", NOW_MS + 1, again)]) == [again[3:]]
    assert store.count("reader_events") == 4
    assert store.count("raw_events") == 4


def test_duplicates_within_one_commit_are_stored_once(store: EventStore) -> None:
    batch = events(2)
    copy = events(1)  # a redelivery of batch[0] in another write of the same commit
    stored = store.commit(
        [
            PendingWrite("http", NOW_MS, batch),
            PendingWrite("mqtt", NOW_MS, copy),
            PendingWrite("mqtt", NOW_MS, [batch[1], batch[1]]),
        ]
    )
    assert stored == [batch, [], []]
    assert store.count("reader_events") == 2
    assert store.count("raw_events") == 2


def test_large_commits_with_duplicates_spread_across_writes(
    store: EventStore, settings: HopperSettings
) -> None:
    # More rows than one statement holds, so the backends' chunked paths are all crossed.
    first = events(2_500)
    assert store.commit(
        [PendingWrite("http", NOW_MS, first[i : i + 100]) for i in range(0, 2_500, 100)]
    ) == [first[i : i + 100] for i in range(0, 2_500, 100)]
    # Half of each write repeats a stored event, and one write repeats another of this commit.
    mixed = events(3_000, start=1_250)
    writes = [PendingWrite("mqtt", NOW_MS + 1, mixed[i : i + 100]) for i in range(0, 3_000, 100)]
    writes.append(PendingWrite("mqtt", NOW_MS + 2, mixed[2_990:]))
    stored = store.commit(writes)
    new = [e for e in mixed if e.hash not in {f.hash for f in first}]
    assert [e for write in stored for e in write] == new
    assert stored[-1] == []
    assert store.count("raw_events") == store.count("reader_events") == 4_250
    pages = query(settings, "SELECT count(DISTINCT page) FROM reader_events")
    assert pages == [(4_250,)]


def test_rejections_are_recorded_with_source_reason_detail_and_raw(store: EventStore) -> None:
    rejected = rejections(b"\xff\xff", b"\x0a\x05ab")
    good = events(1)
    stored = store.commit([PendingWrite("mqtt", NOW_MS, good, rejected)])

    assert stored == [good]
    assert store.count("reader_events_errors") == 2
    assert store.errors() == [
        StoredError(NOW_MS, "mqtt", "undecodable", r.detail, r.raw, len(r.raw), content_hash(r.raw))
        for r in reversed(rejected)
    ]


def test_whole_payload_rejection_keeps_the_raw_payload(store: EventStore) -> None:
    garbage = b"\x0a\xff\xff\xff\xff\x0f"
    decoded, rejected = decode_batch(garbage)
    assert not decoded and rejected[0].reason is RejectReason.UNDECODABLE
    assert store.commit([PendingWrite("http", NOW_MS, [], rejected)]) == [[]]
    assert [e.raw for e in store.errors()] == [garbage]


def test_a_failed_commit_stores_nothing(store: EventStore) -> None:
    good = events(3)
    # raw is NOT NULL in both schemas: the failure comes after the other rows are written.
    broken = Rejection(0, RejectReason.UNDECODABLE, "no bytes", None, size=0)  # type: ignore[arg-type]
    writes = [
        PendingWrite("http", NOW_MS, good, rejections(b"\xff\xff")),
        PendingWrite("mqtt", NOW_MS, [], [broken]),
    ]
    with pytest.raises(COMMIT_FAILURES):
        store.commit(writes)

    assert all(store.count(table) == 0 for table in TABLES)
    # Nothing was half-written: a resend finds every event new, and the store still works.
    writes[1] = PendingWrite("mqtt", NOW_MS, [])
    assert store.commit(writes) == [good, []]
    assert store.count("reader_events_errors") == 1


def test_strings_with_nul_characters_are_stored(
    store: EventStore, settings: HopperSettings
) -> None:
    # Protobuf strings may carry U+0000, which PostgreSQL text and JSONB refuse.
    event = page_view(7, username="stu\x00dent", book_id="book\x00")
    decoded, _ = decode_batch(encode_batch([event]))
    rejected = [Rejection(0, RejectReason.MISSING_FIELD, "bad\x00detail", b"\x00\x01")]
    assert store.commit([PendingWrite("http", NOW_MS, decoded, rejected)]) == [decoded]

    [(raw,)] = query(settings, "SELECT raw FROM raw_events")
    assert bytes(raw) == decoded[0].raw  # the exact bytes survive even where columns cannot
    [(username, payload)] = query(settings, "SELECT username, payload FROM reader_events")
    assert username.startswith("stu") and username.endswith("dent")
    payload = orjson.loads(payload) if isinstance(payload, str) else payload
    assert payload["page"] == 7 and payload["book_id"].startswith("book")
    assert store.errors()[0].raw == b"\x00\x01"


def test_empty_commit(store: EventStore) -> None:
    assert store.commit([]) == []
    assert store.commit([PendingWrite("http", NOW_MS, [])]) == [[]]
    assert all(store.count(table) == 0 for table in TABLES)


def test_purge_errors_deletes_only_rows_older_than_the_cutoff(store: EventStore) -> None:
    for received_ms in (NOW_MS - 2 * DAY_MS, NOW_MS - DAY_MS, NOW_MS):
        store.commit([PendingWrite("http", received_ms, events(1), rejections(b"\xff\xff"))])

    assert store.purge_errors(NOW_MS - DAY_MS) == 1  # strictly older than the cut-off
    assert [e.received_ms for e in store.errors()] == [NOW_MS, NOW_MS - DAY_MS]
    assert store.purge_errors(NOW_MS - DAY_MS) == 0
    assert store.count("reader_events") == 1  # events are never purged (all duplicates here)


def test_errors_are_newest_first_and_limited(store: EventStore) -> None:
    for n in range(5):
        store.commit([PendingWrite(f"source-{n}", NOW_MS, [], rejections(b"\xff\xff"))])

    assert [e.source for e in store.errors()] == [f"source-{n}" for n in range(4, -1, -1)]
    assert [e.source for e in store.errors(limit=2)] == ["source-4", "source-3"]


def test_count_rejects_unknown_tables(store: EventStore) -> None:
    with pytest.raises(ValueError, match="unknown table"):
        store.count("hopper_schema_version")
    with pytest.raises(ValueError, match="unknown table"):
        store.count("reader_events; DROP TABLE raw_events")


def test_ping_answers(store: EventStore) -> None:
    assert store.ping() is None


def test_a_new_instance_sees_committed_data(
    store: EventStore, open_store: Callable[[], EventStore]
) -> None:
    batch = events(3)
    store.commit([PendingWrite("http", NOW_MS, batch, rejections(b"\xff\xff"))])
    store.close()

    reopened = open_store()
    assert reopened.migrate() == 0
    assert [reopened.count(table) for table in TABLES] == [3, 3, 1]
    assert reopened.errors()[0].raw == b"\xff\xff"
    # The dedup index is durable too: a redelivery after a restart is not new.
    assert reopened.commit([PendingWrite("http", NOW_MS, batch)]) == [[]]


def test_purge_errors_job(store: EventStore, settings: HopperSettings) -> None:
    retention_ms = settings.retention.error_retention_days * DAY_MS
    for received_ms in (NOW_MS - retention_ms - 1, NOW_MS - retention_ms + 1):
        store.commit([PendingWrite("http", received_ms, [], rejections(b"\xff\xff"))])

    message = purge_errors_job(settings, FrozenClock(NOW_MS))
    assert "deleted 1 rows" in message
    assert [e.received_ms for e in store.errors()] == [NOW_MS - retention_ms + 1]


# PostgreSQL only: the server is a separate process that can drop the connection.


def test_postgres_reconnects_after_a_lost_connection(postgres_url: str) -> None:
    from hopper.store.postgres import PostgresEventStore

    store = PostgresEventStore(postgres_url)
    try:
        store.migrate()
        pid = store._connection().info.backend_pid
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

        batch = events(2)
        with pytest.raises(BackendUnavailable):
            store.commit([PendingWrite("http", NOW_MS, batch)])
        # The next call reconnects; the failed commit left nothing behind.
        assert store.commit([PendingWrite("http", NOW_MS, batch)]) == [batch]
        assert store.ping() is None
    finally:
        store.close()


def test_postgres_unreachable_server_is_unavailable() -> None:
    from hopper.store.postgres import PostgresEventStore

    with pytest.raises(BackendUnavailable, match="Cannot connect"):
        PostgresEventStore("postgresql://postgres@127.0.0.1:1/test", connect_timeout_secs=2)
