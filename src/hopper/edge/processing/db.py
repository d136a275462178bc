"""The processing's own connection to the node's store: one SQL text for SQLite and PostgreSQL.

Queries are written once with ``:name`` parameters; on PostgreSQL they are rewritten to
``%(name)s`` and bound on the client (``psycopg.ClientCursor``), because the server does
not take parameters in ``CREATE TABLE ... AS``. SQL text must not contain ``%``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from hopper.config import StoreSettings
from hopper.errors import BackendMissing, BackendUnavailable

logger = logging.getLogger(__name__)

Params = Mapping[str, Any]
_NAMED = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")
# Serialises processing runs on one PostgreSQL database (any process); an arbitrary constant.
_PROCESS_LOCK = 0x686F707072


class ProcessingDb:
    """One connection to the store, used by one processing run at a time."""

    def __init__(self, conn: Any, dialect: str, errors: tuple[type[Exception], ...]) -> None:
        self._conn = conn
        self.dialect = dialect
        self._errors = errors

    @classmethod
    def open(cls, settings: StoreSettings) -> ProcessingDb:
        """Connect to the store the settings name (never the ingest writer's connection)."""
        if settings.backend == "postgres":
            try:
                import psycopg
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise BackendMissing("postgres", extra="postgres", library="psycopg") from exc
            conn: Any
            try:
                conn = psycopg.connect(
                    settings.postgres_url.get_secret_value(),
                    autocommit=True,
                    connect_timeout=5,
                    application_name="hopper-processing",
                    cursor_factory=psycopg.ClientCursor,
                )
                # Sorts and temporary tables of a full recompute stay in memory, for this
                # session only (temp_buffers must be set before its first temporary table).
                conn.execute("SET work_mem = '256MB'")
                conn.execute("SET temp_buffers = '256MB'")
                # Compiling each large statement cost ~0.3 s (a tenth of an incremental
                # run's statements) and won nothing measurable over 10M rows.
                conn.execute("SET jit = off")
            except psycopg.Error as exc:
                raise BackendUnavailable(f"Cannot connect to PostgreSQL: {exc}") from exc
            return cls(conn, "postgres", (psycopg.OperationalError, psycopg.InterfaceError))
        try:
            settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            lite = sqlite3.connect(
                settings.sqlite_path, isolation_level=None, check_same_thread=False, timeout=60
            )
            lite.execute("PRAGMA cache_size=-262144")  # 256 MiB: the sorts of a full recompute
            lite.execute("PRAGMA temp_store=FILE")
            lite.execute("PRAGMA threads=2")  # large sorts in two threads
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"Cannot open SQLite store: {exc}") from exc
        return cls(lite, "sqlite", (sqlite3.OperationalError,))

    @property
    def row_number_type(self) -> str:
        """The column type of a row number that an insert assigns 1, 2... in order.

        The one place where the DDL differs: SQLite's rowid, PostgreSQL's identity (both
        assign in the order an ``INSERT ... SELECT ... ORDER BY`` delivers the rows).
        """
        if self.dialect == "sqlite":
            return "INTEGER PRIMARY KEY"
        return "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"

    def _sql(self, sql: str) -> str:
        if self.dialect == "sqlite":
            return sql
        if "%" in sql:
            raise ValueError("processing SQL must not contain '%'")
        return _NAMED.sub(r"%(\1)s", sql)

    def execute(self, sql: str, params: Params | None = None) -> int:
        """Run one statement; return the rows it changed (-1 when not known)."""
        try:
            cursor = self._conn.execute(self._sql(sql), params or {})
        except self._errors as exc:
            raise BackendUnavailable(f"Processing query failed: {exc}") from exc
        return int(cursor.rowcount)

    def query(self, sql: str, params: Params | None = None) -> list[tuple[Any, ...]]:
        """Run one query; return its rows."""
        try:
            rows = self._conn.execute(self._sql(sql), params or {}).fetchall()
        except self._errors as exc:
            raise BackendUnavailable(f"Processing query failed: {exc}") from exc
        return [tuple(row) for row in rows]

    def stream(
        self, sql: str, params: Params | None = None, *, batch: int = 10_000
    ) -> Iterator[tuple[Any, ...]]:
        """Yield the rows of a large query without holding them all in memory."""
        try:
            if self.dialect == "sqlite":
                yield from self._conn.execute(sql, params or {})
                return
            with self._conn.transaction(), self._conn.cursor(name="hopper_stream") as cursor:
                cursor.itersize = batch
                cursor.execute(self._sql(sql), params or {})
                yield from cursor
        except self._errors as exc:
            raise BackendUnavailable(f"Processing query failed: {exc}") from exc

    def insert_rows(
        self, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
    ) -> None:
        """Insert many rows (COPY on PostgreSQL)."""
        try:
            if self.dialect == "sqlite":
                marks = ", ".join("?" * len(columns))
                self._conn.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",  # noqa: S608
                    rows,
                )
                return
            with self._conn.cursor() as cursor:
                with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
        except self._errors as exc:
            raise BackendUnavailable(f"Processing insert failed: {exc}") from exc

    def create_temp(
        self, name: str, select: str, params: Params | None = None, *, joined: bool = False
    ) -> None:
        """(Re)create the temporary table ``name`` from a query.

        ``joined``: later queries join it to other tables, so PostgreSQL's planner gets its
        statistics (it knows nothing of a temporary table until it is analysed).
        """
        self.execute(f"DROP TABLE IF EXISTS {name}")
        self.execute(f"CREATE TEMP TABLE {name} AS {select}", params)
        if joined:
            self.analyze(name)

    def create_temp_table(self, name: str, columns: str) -> None:
        """(Re)create an empty temporary table with the given column definitions."""
        self.execute(f"DROP TABLE IF EXISTS {name}")
        self.execute(f"CREATE TEMP TABLE {name} ({columns})")

    @contextlib.contextmanager
    def index_lookups(self) -> Iterator[None]:
        """Within the block, PostgreSQL joins row by row through indexes (nested loops).

        For a join whose row count its planner cannot guess (a few hundred (student, day)
        windows over the events, each a range of the ``(username, app_time_ms)`` index):
        it guessed 6 rows of 420k and hashed all 10M events, or with sequential scans
        alone forbidden, read them all through the primary key (4.5-6 s); as nested loops
        over the index, 1.5 s (2.3 s on rows committed just before). SQLite's planner
        already takes the index.
        """
        if self.dialect != "postgres":
            yield
            return
        settings = ("enable_seqscan", "enable_hashjoin", "enable_mergejoin")
        for name in settings:
            self.execute(f"SET {name} = off")
        try:
            yield
        finally:
            for name in settings:
                self.execute(f"RESET {name}")

    def settled_max_id(self, wait_secs: float) -> int:
        """The highest ``reader_events`` id such that no lower id can still be committed.

        On SQLite one writer at a time draws ids and commits, so that is ``MAX(id)``. On
        PostgreSQL ids are drawn at insert, not at commit: with two writers (two workers,
        or a node and a worker), id 101 can commit while 100 is still in flight, and a
        watermark at 101 would skip 100 for good. Every write into the table holds the
        shared side of ``EVENT_WRITERS_LOCK`` from before it draws ids to its commit; the
        exclusive side waits for them all, so the maximum read under it has no open id
        below it. It is tried for at most 0.2 s at a time, then let go for as long, so
        that ingest (queued behind the request) is never held longer; after ``wait_secs``
        the run fails, to be retried. (Not ``LOCK TABLE``: it would wait out a vacuum too.)
        """
        if self.dialect != "postgres":
            return int(self.query("SELECT COALESCE(MAX(id), 0) FROM reader_events")[0][0])
        import psycopg.errors

        from hopper.store.postgres import EVENT_WRITERS_LOCK

        deadline = time.monotonic() + wait_secs
        while True:
            try:
                with self._conn.transaction():
                    self._conn.execute("SET LOCAL lock_timeout = '200ms'")
                    self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (EVENT_WRITERS_LOCK,))
                    row = self._conn.execute(
                        "SELECT COALESCE(MAX(id), 0) FROM reader_events"
                    ).fetchone()
                    return int(row[0])
            except psycopg.errors.LockNotAvailable:
                if time.monotonic() >= deadline:
                    raise BackendUnavailable(
                        f"A write into reader_events has stayed open for over {wait_secs:g} s"
                        " (processing waits until every open write has committed, so that"
                        " none is skipped); the next run tries again",
                        retry_after_secs=wait_secs,
                    ) from None
                time.sleep(0.2)
            except self._errors as exc:
                raise BackendUnavailable(f"Cannot read the events' last id: {exc}") from exc

    def analyze(self, name: str) -> None:
        """Refresh the planner's statistics of a table filled after it was created."""
        if self.dialect == "postgres":
            self.execute(f"ANALYZE {name}")

    @contextlib.contextmanager
    def write_transaction(self) -> Iterator[None]:
        """One write transaction; on PostgreSQL it also holds the processing lock."""
        conn = self._conn
        try:
            if self.dialect == "sqlite":
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise
                return
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PROCESS_LOCK,))
                yield
        except self._errors as exc:
            raise BackendUnavailable(f"Processing transaction failed: {exc}") from exc

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()
