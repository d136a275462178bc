"""SqliteEventStore: the embedded default (WAL mode, one writer connection)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from hopper.config import StoreSettings
from hopper.errors import BackendUnavailable
from hopper.events.model import Event
from hopper.store.base import TABLES, PendingWrite, StoredError
from hopper.store.rows import ERROR_COLUMNS, READER_EVENT_COLUMNS, rows_after_raw_insert
from hopper.store.schema import MIGRATIONS, VERSION_TABLE

logger = logging.getLogger(__name__)

# Rows per multi-row INSERT ... RETURNING (4 parameters each, well under SQLite's limit).
_CHUNK = 500


@cache
def _insert_raw_sql(rows: int) -> str:
    values = ",".join(["(?,?,?,?)"] * rows)
    return (
        f"INSERT INTO raw_events (app_time_ms, hash, received_ms, raw) VALUES {values} "  # noqa: S608
        "ON CONFLICT DO NOTHING RETURNING app_time_ms, hash"
    )


_INSERT_READER = (
    f"INSERT INTO reader_events ({', '.join(READER_EVENT_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('?' * len(READER_EVENT_COLUMNS))})"
)
_INSERT_ERROR = (
    f"INSERT INTO reader_events_errors ({', '.join(ERROR_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('?' * len(ERROR_COLUMNS))})"
)


class SqliteEventStore:
    """Event store in one SQLite file; use one instance per thread."""

    backend = "sqlite"

    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=30
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a committed transaction survives a process crash.
            self._conn.execute(f"PRAGMA synchronous={synchronous}")
            self._conn.execute("PRAGMA cache_size=-65536")
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"Cannot open SQLite store {path}: {exc}") from exc

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> SqliteEventStore:
        """Open the store the settings name."""
        return cls(settings.sqlite_path, synchronous=settings.sqlite_synchronous)

    def migrate(self) -> int:
        """Apply pending migrations, each in its own transaction."""
        conn = self._conn
        conn.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER NOT NULL)")
        ran = 0
        for migration in MIGRATIONS:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Read under the write lock: another process may have just applied it.
                row = conn.execute(f"SELECT max(version) FROM {VERSION_TABLE}").fetchone()  # noqa: S608
                if (row[0] or 0) >= migration.version:
                    conn.execute("COMMIT")
                    continue
                for statement in migration.sqlite:
                    conn.execute(statement)
                conn.execute(
                    f"INSERT INTO {VERSION_TABLE} (version) VALUES (?)",  # noqa: S608
                    (migration.version,),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            logger.info("Applied migration %d: %s.", migration.version, migration.description)
            ran += 1
        return ran

    def commit(self, writes: Sequence[PendingWrite]) -> list[list[Event]]:
        """Write all writes in one transaction; return the new events of each."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                stored = self._write(conn, writes)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            # Locked, I/O error, disk full: worth retrying. Other errors (constraint
            # violations) come from the data and are raised as they are.
            raise BackendUnavailable(f"SQLite commit failed: {exc}") from exc
        return stored

    def _write(self, conn: sqlite3.Connection, writes: Sequence[PendingWrite]) -> list[list[Event]]:
        # Insert the raw rows first: the primary key decides which events are new.
        candidates = [(w, e) for w in writes for e in w.events]
        inserted: set[tuple[int, bytes]] = set()
        for start in range(0, len(candidates), _CHUNK):
            chunk = candidates[start : start + _CHUNK]
            params: list[object] = []
            for w, e in chunk:
                params += (e.app_time_ms, e.hash, w.received_ms, e.raw)
            inserted.update(conn.execute(_insert_raw_sql(len(chunk)), params).fetchall())
        rows = rows_after_raw_insert(writes, inserted)
        if rows.reader:
            conn.executemany(_INSERT_READER, rows.reader)
        if rows.errors:
            conn.executemany(_INSERT_ERROR, rows.errors)
        return rows.stored

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
            conn.execute("ROLLBACK")
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
            "SELECT received_ms, source, reason, detail, raw FROM reader_events_errors "
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
        """Close the connection."""
        self._conn.close()
