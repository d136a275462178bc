"""SqliteEventStore: the embedded default (WAL mode, one writer connection)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from hopper.config import StoreSettings
from hopper.errors import BackendUnavailable
from hopper.events.model import Event
from hopper.sinks.base import PendingWrite
from hopper.store.base import TABLES, StoredError
from hopper.store.migrations import apply_migrations
from hopper.store.rows import (
    ERROR_COLUMNS,
    RAW_EVENT_COLUMNS,
    READER_EVENT_COLUMNS,
    error_row,
    reader_event_row,
    rows_after_raw_insert,
)

logger = logging.getLogger(__name__)

# Each statement inserts many rows because sqlite3 releases the GIL once per step: one
# step per row lets the event loop's thread hold the writer back at every row (the
# convoy effect), while one step per ~1,000 rows runs them in C beside it. Statements
# are prepared for a few fixed sizes only (preparing one costs about as much as running
# it), and a commit's rows are cut into those sizes, largest first.
_CHUNK_SIZES = (1024, 256, 64, 16, 4, 1)


def chunk_sizes(rows: int, max_size: int = _CHUNK_SIZES[0]) -> list[int]:
    """Cut a number of rows into the fixed statement sizes (at most ``max_size``)."""
    sizes = []
    for size in _CHUNK_SIZES:
        if size > max_size:
            continue
        count, rows = divmod(rows, size)
        sizes += [size] * count
    return sizes


@cache
def _insert_sql(table: str, columns: tuple[str, ...], rows: int, suffix: str = "") -> str:
    one = f"({','.join('?' * len(columns))})"
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES "  # noqa: S608
        f"{','.join([one] * rows)}{suffix}"
    )


_IGNORE_DUPLICATES = " ON CONFLICT DO NOTHING"
_RETURN_NEW = " ON CONFLICT DO NOTHING RETURNING app_time_ms, hash"

_INSERT_ERROR = (
    f"INSERT INTO reader_events_errors ({', '.join(ERROR_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('?' * len(ERROR_COLUMNS))})"
)


def _insert_chunked(
    conn: sqlite3.Connection,
    table: str,
    columns: tuple[str, ...],
    params: list[Any],
    suffix: str = "",
) -> list[Any]:
    """Insert rows given as one flat parameter list; return what the statements return."""
    width = len(columns)
    # SQLite before 3.32 allows only 999 parameters a statement.
    max_size = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width
    returned: list[Any] = []
    start = 0
    for size in chunk_sizes(len(params) // width, max_size):
        end = start + size * width
        # Rows only for a RETURNING suffix; a plain INSERT has none to fetch.
        returned += conn.execute(_insert_sql(table, columns, size, suffix), params[start:end])
        start = end
    return returned


# A commit never waits for a checkpoint (copying the WAL into the database file, then
# fsync): a checkpointer thread does it every CHECKPOINT_INTERVAL_SECS with a connection
# of its own, outside the GIL. A writer that never pauses keeps the WAL from restarting;
# past WAL_LIMIT_PAGES its own commits checkpoint the few frames left, so the WAL stays
# bounded (4 KiB pages: 64 MiB).
CHECKPOINT_INTERVAL_SECS = 0.25
WAL_LIMIT_PAGES = 16384


class _Checkpointer:
    """Background thread that checkpoints the WAL of one database file."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(
            target=self._run, name="hopper-sqlite-checkpoint", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(CHECKPOINT_INTERVAL_SECS):
            try:
                # PASSIVE never blocks the writer; it copies what no reader still needs.
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:
                if not self._failing:  # say it once, not four times a second
                    logger.warning("SQLite background checkpoint failed: %s.", exc)
                self._failing = True
            else:
                self._failing = False

    def stop(self) -> None:
        """Stop the thread and close its connection."""
        self._stop.set()
        self._thread.join()
        self._conn.close()


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open, never hiding the error that led here.

    SQLite rolls back by itself on some errors (a full disk); a second ROLLBACK would then
    fail with "no transaction is active" and replace the real cause in the log.
    """
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


class SqliteEventStore:
    """Event store in one SQLite file; use one instance per thread."""

    name = "store"
    backend = "sqlite"
    commit_waits_on_server = False

    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(
                path,
                isolation_level=None,
                check_same_thread=False,
                timeout=30,
                # Room for every fixed-size insert of every table, and the queries.
                cached_statements=256,
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a committed transaction survives a process crash.
            self._conn.execute(f"PRAGMA synchronous={synchronous}")
            self._conn.execute("PRAGMA cache_size=-65536")
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"Cannot open SQLite store {path}: {exc}") from exc
        self._checkpointer: _Checkpointer | None = None

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> SqliteEventStore:
        """Open the store the settings name."""
        return cls(settings.sqlite_path, synchronous=settings.sqlite_synchronous)

    def migrate(self) -> int:
        """Apply pending migrations, each in its own transaction."""
        return apply_migrations(self)

    dialect = "sqlite"

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[Callable[[str, Sequence[Any]], list[Any]]]:
        """A write transaction (BEGIN IMMEDIATE): one migrator at a time."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield lambda sql, params: conn.execute(sql, params).fetchall()
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def commit(self, writes: Sequence[PendingWrite]) -> list[list[Event]]:
        """Write all writes in one transaction; return the new events of each."""
        conn = self._conn
        try:
            if self._checkpointer is None:
                # Started by the first commit: stores opened only to read need none.
                conn.execute(f"PRAGMA wal_autocheckpoint={WAL_LIMIT_PAGES}")
                self._checkpointer = _Checkpointer(self.path)
            conn.execute("BEGIN IMMEDIATE")
            try:
                stored = self._write(conn, writes)
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        except sqlite3.OperationalError as exc:
            # Locked, I/O error, disk full: worth retrying. Other errors (constraint
            # violations) come from the data and are raised as they are.
            raise BackendUnavailable(f"SQLite commit failed: {exc}") from exc
        return stored

    def _write(self, conn: sqlite3.Connection, writes: Sequence[PendingWrite]) -> list[list[Event]]:
        # One pass builds the rows of both tables as if every event were new (the usual
        # case); the raw insert then tells whether that was so.
        raw: list[Any] = []
        reader: list[Any] = []
        for w in writes:
            received = w.received_ms
            for e in w.events:
                raw += (e.app_time_ms, e.hash, received, e.raw)
                reader += reader_event_row(e, received)
        stored = [list(w.events) for w in writes]
        errors = [error_row(w, r) for w in writes for r in w.rejections]
        count = len(raw) // len(RAW_EVENT_COLUMNS)
        if count:
            # The primary key of raw_events decides which events are new. Without
            # RETURNING each statement is one step; when fewer rows went in than were
            # sent, some were duplicates (rare): redo the insert asking which keys were
            # new (RETURNING steps once per row).
            conn.execute("SAVEPOINT raw_insert")
            before = conn.total_changes
            _insert_chunked(conn, "raw_events", RAW_EVENT_COLUMNS, raw, _IGNORE_DUPLICATES)
            if conn.total_changes - before != count:
                conn.execute("ROLLBACK TO raw_insert")
                inserted = set(
                    _insert_chunked(conn, "raw_events", RAW_EVENT_COLUMNS, raw, _RETURN_NEW)
                )
                rows = rows_after_raw_insert(writes, inserted)
                stored, errors = rows.stored, rows.errors
                reader = [value for row in rows.reader for value in row]
            conn.execute("RELEASE raw_insert")
            if reader:
                _insert_chunked(conn, "reader_events", READER_EVENT_COLUMNS, reader)
        if errors:
            conn.executemany(_INSERT_ERROR, errors)
        return stored

    def purge_errors(self, older_than_ms: int) -> int:
        """Delete errors received before the cut-off."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            cursor = conn.execute(
                "DELETE FROM reader_events_errors WHERE received_ms < ?", (older_than_ms,)
            )
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        return cursor.rowcount

    def count(self, table: str) -> int:
        """Count the rows of one of the store's tables."""
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        row = self._conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
        return int(row[0])

    def errors(self, limit: int = 100) -> list[StoredError]:
        """Return the newest recorded rejections."""
        rows = self._conn.execute(
            "SELECT received_ms, source, reason, detail, raw, raw_size, raw_hash "
            "FROM reader_events_errors "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [StoredError(*row) for row in rows]

    def ping(self) -> None:
        """Check that the database answers."""
        try:
            self._conn.execute("SELECT 1").fetchone()
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"SQLite store {self.path} unusable: {exc}") from exc

    def close(self) -> None:
        """Stop the checkpointer and close the connection."""
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        self._conn.close()
