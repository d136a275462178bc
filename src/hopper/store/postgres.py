"""PostgresEventStore: the event tables on a PostgreSQL server (bulk paths, one writer)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import orjson

from hopper.config import StoreSettings
from hopper.errors import BackendMissing, BackendUnavailable
from hopper.events.model import Event, Rejection
from hopper.sinks.base import PendingWrite
from hopper.store.base import TABLES, StoredError
from hopper.store.migrations import apply_migrations
from hopper.store.rows import (
    ERROR_COLUMNS,
    READER_EVENT_COLUMNS,
    error_row,
    reader_event_row,
    rows_after_raw_insert,
)

try:
    import psycopg
    from psycopg import errors as pg_errors
except ImportError as exc:  # pragma: no cover - depends on the install
    raise BackendMissing("postgres", extra="postgres", library="psycopg") from exc

logger = logging.getLogger(__name__)

# Serialises concurrent migrators (any Hopper process on this database); an arbitrary constant.
_MIGRATE_LOCK = 0x686F70706572

# One statement inserts every raw row and answers which keys were new: atomic even with
# several writers, and the arrays travel in binary in a single round trip.
_INSERT_RAW = (
    "INSERT INTO raw_events (app_time_ms, hash, received_ms, raw) "
    "SELECT * FROM unnest(%b::bigint[], %b::bytea[], %b::bigint[], %b::bytea[]) "
    "ON CONFLICT DO NOTHING RETURNING app_time_ms, hash"
)
# Held shared by every write into reader_events, from before it draws ids to its commit,
# and taken exclusive by processing to read a watermark with no open id below it
# (hopper.edge.processing.db.ProcessingDb.settled_max_id); an arbitrary constant.
EVENT_WRITERS_LOCK = 0x686F707077
_COPY_READER = f"COPY reader_events ({', '.join(READER_EVENT_COLUMNS)}) FROM STDIN"
_COPY_ERRORS = f"COPY reader_events_errors ({', '.join(ERROR_COLUMNS)}) FROM STDIN"

# Errors of the server or the connection, not of the data: the writer retries them.
_RETRYABLE = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    pg_errors.ReadOnlySqlTransaction,  # a standby after a failover, until it is promoted
)

# PostgreSQL text and jsonb cannot hold U+0000, which protobuf strings may carry.
_NUL = "\x00"
_PAYLOAD = READER_EVENT_COLUMNS.index("payload")


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace(_NUL, "\ufffd")
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _reader_row(event: Event, received_ms: int) -> tuple[Any, ...]:
    """Return the ``reader_events`` row, with U+0000 replaced (raw_events keeps the bytes)."""
    row = reader_event_row(event, received_ms)
    envelope = (
        event.username
        + event.device_id
        + event.school_id
        + event.app_version
        + event.platform
        + event.session_id
    )
    if _NUL not in envelope and "\\u0000" not in row[_PAYLOAD]:
        return row
    logger.debug("Replacing U+0000 in the parsed columns of an event.")
    fixed = [_scrub(value) for value in row]
    fixed[_PAYLOAD] = orjson.dumps(_scrub(event.payload)).decode()
    return tuple(fixed)


def _error_row(write: PendingWrite, rejection: Rejection) -> tuple[Any, ...]:
    """Return the ``reader_events_errors`` row, with U+0000 replaced in the detail."""
    row = error_row(write, rejection)
    return (*row[:3], row[3].replace(_NUL, "\ufffd"), *row[4:])


class PostgresEventStore:
    """Event store on PostgreSQL; one connection, used by one thread at a time.

    A lost connection makes the call raise BackendUnavailable; the next call reconnects.
    """

    name = "store"
    backend = "postgres"
    commit_waits_on_server = True

    def __init__(self, url: str, *, connect_timeout_secs: int = 5) -> None:
        self._url = url
        self._connect_timeout = connect_timeout_secs
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._connection()  # fail at start-up when the server is unreachable

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> PostgresEventStore:
        """Open the store the settings name."""
        return cls(settings.postgres_url.get_secret_value())

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        try:
            # autocommit: reads leave no idle transaction; writes open one explicitly.
            conn = psycopg.connect(
                self._url,
                autocommit=True,
                connect_timeout=self._connect_timeout,
                application_name="hopper",
            )
        except psycopg.Error as exc:
            raise BackendUnavailable(f"Cannot connect to PostgreSQL: {exc}") from exc
        self._conn = conn
        return conn

    def _unavailable(self, action: str, exc: psycopg.Error) -> BackendUnavailable:
        """Drop a connection that may be broken, so the next call reconnects."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        return BackendUnavailable(f"PostgreSQL {action} failed: {exc}")

    def migrate(self) -> int:
        """Apply pending migrations, one transaction each, under an advisory lock."""
        try:
            return apply_migrations(self)
        except _RETRYABLE as exc:
            raise self._unavailable("migration", exc) from exc

    dialect = "postgres"

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[Callable[[str, Sequence[Any]], list[Any]]]:
        """A transaction holding the migration lock: one migrator at a time, any process."""
        conn = self._connection()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))

            def execute(sql: str, params: Sequence[Any]) -> list[Any]:
                cursor = conn.execute(sql.replace("?", "%s"), params)
                return cursor.fetchall() if cursor.description is not None else []

            yield execute

    def commit(self, writes: Sequence[PendingWrite]) -> list[list[Event]]:
        """Write all writes in one transaction; return the new events of each."""
        conn = self._connection()
        try:
            with conn.transaction(), conn.cursor() as cur:
                return self._write(cur, writes)
        except _RETRYABLE as exc:
            raise self._unavailable("commit", exc) from exc

    def _write(
        self, cur: psycopg.Cursor[tuple[Any, ...]], writes: Sequence[PendingWrite]
    ) -> list[list[Event]]:
        # Insert the raw rows first: the primary key decides which events are new.
        times: list[int] = []
        hashes: list[bytes] = []
        received: list[int] = []
        raws: list[bytes] = []
        for w in writes:
            for e in w.events:
                times.append(e.app_time_ms)
                hashes.append(e.hash)
                received.append(w.received_ms)
                raws.append(e.raw)
        inserted: set[tuple[int, bytes]] = set()
        if times:
            cur.execute(_INSERT_RAW, (times, hashes, received, raws))
            inserted.update(cur.fetchall())
        rows = rows_after_raw_insert(
            writes, inserted, reader_row=_reader_row, rejection_row=_error_row
        )
        if rows.reader:
            cur.execute("SELECT pg_advisory_xact_lock_shared(%s)", (EVENT_WRITERS_LOCK,))
        for sql, table_rows in ((_COPY_READER, rows.reader), (_COPY_ERRORS, rows.errors)):
            if table_rows:
                with cur.copy(sql) as copy:
                    for row in table_rows:
                        copy.write_row(row)
        return rows.stored

    def purge_errors(self, older_than_ms: int) -> int:
        """Delete errors received before the cut-off."""
        conn = self._connection()
        try:
            cur = conn.execute(
                "DELETE FROM reader_events_errors WHERE received_ms < %s", (older_than_ms,)
            )
        except _RETRYABLE as exc:
            raise self._unavailable("purge", exc) from exc
        return cur.rowcount

    def count(self, table: str) -> int:
        """Count the rows of one of the store's tables."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        try:
            row = self._connection().execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
        except _RETRYABLE as exc:
            raise self._unavailable("count", exc) from exc
        return int(row[0]) if row is not None else 0

    def errors(self, limit: int = 100) -> list[StoredError]:
        """Return the newest recorded rejections."""
        try:
            rows = (
                self._connection()
                .execute(
                    "SELECT received_ms, source, reason, detail, raw, raw_size, raw_hash "
                    "FROM reader_events_errors "
                    "ORDER BY id DESC LIMIT %s",
                    (limit,),
                )
                .fetchall()
            )
        except _RETRYABLE as exc:
            raise self._unavailable("read", exc) from exc
        return [StoredError(*row) for row in rows]

    def ping(self) -> None:
        """Check that the server answers."""
        try:
            self._connection().execute("SELECT 1").fetchone()
        except _RETRYABLE as exc:
            raise self._unavailable("ping", exc) from exc

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
