"""The e-content import (``hopper job ec-import``): the analytics' reference data, daily.

Each source in ``ecimport.sources`` provides some of the ``ec_*`` tables
(``hopper.store.reference``). A table is imported in two steps on the node's store:

1. staging: its source's rows are read in batches, checked one by one (a bad row is
   reported with its table and key and skipped) and written to a temporary table of this
   connection, which locks none of the store's tables (SQLite: the temp database);
2. apply: one short transaction makes the table equal to the staged rows. Rows gone from
   the source are deleted, rows whose hash changed are replaced (``changed_ms`` = now),
   new rows are inserted, unchanged rows are not touched and keep their ``changed_ms``.
   A bad row whose key could be read keeps its previous version rather than being deleted.

A table whose source fails (down, a timeout, bad SQL, an HTTP error, too many rows) is not
applied: its previous data stays, ``ec_table_state`` says ``failed`` with the error, the
other tables go on, and the job raises ``EcImportError`` at the end, so that ``hopper job
ec-import`` exits non-zero and ``/health`` warns (check ``ec_import``).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import CreateTable, DropTable

from hopper.clock import Clock
from hopper.config import (
    EcHttpSourceSettings,
    EcImportSettings,
    EcSqlSourceSettings,
    EcTableName,
    HopperSettings,
    StoreSettings,
)
from hopper.edge.ecrows import BadRow, CheckedRow, RowChecker
from hopper.edge.ecsources import HttpSource, RawRows, RowSource, SourceUnreachable, SqlSource
from hopper.errors import BackendMissing, BackendUnavailable, HopperError
from hopper.observe.logs import redact
from hopper.store import open_event_store
from hopper.store.reference import REFERENCE_TABLES, TableShape, ec_table_state, table_shape

logger = logging.getLogger(__name__)

_STAGE = "hopper_ec_stage"
_LOCK = 0x6563696D706F7274  # PostgreSQL advisory lock of the apply step ("ecimport")
_IN_CHUNK = 300  # keys per IN (...) lookup, under SQLite's parameter limit
_MAX_ERROR_CHARS = 2000


class EcImportError(HopperError):
    """Some tables of the e-content import failed; the message is the job's summary."""


@dataclass
class TableResult:
    """What the import did to one table."""

    table: str
    source: str
    rows: int = 0  # rows in the table afterwards
    new: int = 0
    changed: int = 0
    deleted: int = 0
    bad: list[BadRow] = field(default_factory=list)  # the first max_reported_bad_rows
    bad_count: int = 0
    error: str | None = None  # set: the table failed and kept its previous data
    is_unreachable: bool = False  # the source could not be reached at all

    def describe(self) -> str:
        """One clause of the job's summary."""
        if self.error is not None:
            return f"{self.table} failed, previous data kept: {self.error}"
        text = f"{self.table} {_count(self.rows, 'row')} ({self.new} new, {self.changed} changed, "
        text += f"{self.deleted} deleted)"
        if self.bad_count:
            more = self.bad_count - len(self.bad)
            listed = "; ".join(str(b) for b in self.bad) + (f"; {more} more" if more else "")
            text += f", {_count(self.bad_count, 'bad row')} skipped [{listed}]"
        return text


def run_ec_import(settings: HopperSettings, clock: Clock) -> str:
    """Import every configured table; return the summary, or raise EcImportError."""
    config = settings.ecimport
    if not config.sources:
        return "no source configured (ecimport.sources): nothing imported"
    store = open_event_store(settings.store)
    try:
        store.migrate()
    finally:
        store.close()
    results: list[TableResult] = []
    reference = ReferenceStore(settings.store)
    try:
        for index, source_settings in enumerate(config.sources):
            results += _import_source(
                source_settings, f"ecimport.sources[{index}]", config, reference, clock
            )
    finally:
        reference.close()
    failed = [r.table for r in results if r.error is not None]
    head = f"{len(results) - len(failed)} of {len(results)} tables imported"
    summary = f"{head}: " + "; ".join(r.describe() for r in results)
    if failed:
        logger.error("E-content import: tables failed: %s.", ", ".join(failed))
        raise EcImportError(summary)
    return summary


def _import_source(
    settings: EcSqlSourceSettings | EcHttpSourceSettings,
    setting: str,
    config: EcImportSettings,
    reference: ReferenceStore,
    clock: Clock,
) -> list[TableResult]:
    tables = [name for name in REFERENCE_TABLES if name in settings.tables]
    source: RowSource
    try:
        if isinstance(settings, EcSqlSourceSettings):
            source = SqlSource(
                settings, setting=setting, batch_rows=config.batch_rows, max_rows=config.max_rows
            )
        else:
            source = HttpSource(settings)
    except HopperError as exc:  # a bad URL, a driver that is not installed
        return [_failed(reference, t, settings.name, str(exc), clock) for t in tables]
    results = []
    unreachable: str | None = None
    try:
        for table in tables:
            if unreachable is not None:
                results.append(_failed(reference, table, source.name, unreachable, clock))
                continue
            result = _import_table(table, source, config, reference, clock)
            if result.is_unreachable:
                unreachable = f"not tried after {table}: {result.error}"
            results.append(result)
    finally:
        source.close()
    return results


def _failed(
    reference: ReferenceStore, table: str, source: str, error: str, clock: Clock
) -> TableResult:
    logger.error("E-content import of %s from source %s failed: %s.", table, source, error)
    result = TableResult(table, source, error=error)
    reference.record_failure(result, clock.now_ms())
    return result


def _import_table(
    table: EcTableName,
    source: RowSource,
    config: EcImportSettings,
    reference: ReferenceStore,
    clock: Clock,
) -> TableResult:
    """Stage the source's rows of one table, then apply them, or record why not."""
    shape = table_shape(table)
    checker = RowChecker(shape, config.max_value_chars)
    result = TableResult(table, source.name)
    seen = 0
    batches = source.read(table, checker.required)
    stage = reference.create_stage(shape)
    try:
        while True:
            try:
                batch = _next_batch(batches, seen, config.max_rows, source.name, table)
            except _SOURCE_ERRORS as exc:
                batches.close()
                result.error = redact(str(exc))
                result.is_unreachable = isinstance(exc, SourceUnreachable)
                logger.error(
                    "E-content import of %s from source %s failed: %s.",
                    table,
                    source.name,
                    result.error,
                )
                reference.record_failure(result, clock.now_ms())
                return result
            if batch is None:
                break
            checked = []
            for position, raw in enumerate(batch, start=seen + 1):
                row, bad = checker.check(raw, position)
                if row is not None:
                    checked.append(row)
                if bad is not None:
                    _report(result, bad, config)
            seen += len(batch)
            for row, problem in reference.stage(stage, shape, checked):
                _report(result, BadRow(table, checker.key_text(row.key), problem), config)
        reference.apply(stage, shape, result, clock.now_ms())
    finally:
        with contextlib.suppress(HopperError):  # the store failed: that error is raised
            reference.drop_stage(stage)
    logger.info("E-content import: %s.", result.describe())
    return result


def _next_batch(
    batches: Generator[RawRows, None, None], seen: int, max_rows: int, source: str, table: str
) -> RawRows | None:
    """Return the source's next batch (None at the end), within ``ecimport.max_rows``."""
    batch = next(batches, None)
    if batch is not None and seen + len(batch) > max_rows:
        raise EcImportError(
            f"source {source} has more than ecimport.max_rows ({max_rows}) rows for {table}"
        )
    return batch


# A source's failures that fail its table (the store's are raised: they stop the job).
_SOURCE_ERRORS = (HopperError, SQLAlchemyError, httpx.HTTPError, OSError, ValueError)


def _report(result: TableResult, bad: BadRow, config: EcImportSettings) -> None:
    result.bad_count += 1
    if len(result.bad) < config.max_reported_bad_rows:
        result.bad.append(bad)
        logger.warning("E-content import skipped a bad row: %s.", bad)


# --- the node's store -------------------------------------------------------------------


def _store_engine(store: StoreSettings) -> sa.Engine:
    """An engine on the node's own store, which may be a libpq URL or DSN."""
    if store.backend == "sqlite":
        path = store.sqlite_path

        def sqlite_connect() -> sqlite3.Connection:
            return sqlite3.connect(path, timeout=30, check_same_thread=False)

        return sa.create_engine("sqlite://", creator=sqlite_connect, poolclass=NullPool)
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BackendMissing("postgres", extra="postgres", library="psycopg") from exc
    conninfo = store.postgres_url.get_secret_value()

    def pg_connect() -> psycopg.Connection[Any]:
        return psycopg.connect(conninfo, connect_timeout=5, application_name="hopper-ecimport")

    return sa.create_engine("postgresql+psycopg://", creator=pg_connect, poolclass=NullPool)


class ReferenceStore:
    """The reference tables of the node's store, on one connection (one thread)."""

    def __init__(self, store: StoreSettings) -> None:
        self._is_sqlite = store.backend == "sqlite"
        self._engine = _store_engine(store)
        try:
            self._conn = self._engine.connect()
            if self._is_sqlite:
                # Transactions are begun by hand: BEGIN IMMEDIATE for the apply step.
                self._conn.execution_options(isolation_level="AUTOCOMMIT")
        except (DBAPIError, OSError) as exc:
            self._engine.dispose()
            raise BackendUnavailable(
                f"Cannot open the store for the e-content import: {_store_error(exc)}"
            ) from exc

    @contextlib.contextmanager
    def _transaction(self, *, write: bool = False) -> Iterator[sa.Connection]:
        """A transaction; ``write``: one apply at a time (any process), started at once."""
        conn = self._conn
        try:
            if self._is_sqlite:
                conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield conn
                    conn.exec_driver_sql("COMMIT")
                except BaseException:
                    with contextlib.suppress(DBAPIError):
                        conn.exec_driver_sql("ROLLBACK")
                    raise
            else:
                with conn.begin():
                    if write:
                        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_LOCK)))
                    yield conn
        except DBAPIError as exc:
            raise BackendUnavailable(
                f"The store failed during the e-content import: {_store_error(exc)}"
            ) from exc

    def create_stage(self, shape: TableShape) -> sa.Table:
        """Create this connection's temporary staging table for ``shape``."""
        columns = [
            sa.Column(c.name, c.type, primary_key=c.primary_key)
            for c in shape.table.columns
            if c.name in shape.columns
        ]
        stage = sa.Table(
            _STAGE,
            sa.MetaData(),
            *columns,
            sa.Column("row_hash", sa.LargeBinary),
            sa.Column("is_good", sa.Boolean, nullable=False),
            *(sa.UniqueConstraint(*cols) for cols in shape.unique),
            prefixes=["TEMPORARY"],
        )
        with self._transaction() as conn:
            conn.execute(DropTable(stage, if_exists=True))
            conn.execute(CreateTable(stage))
        return stage

    def drop_stage(self, stage: sa.Table) -> None:
        """Drop the staging table."""
        with self._transaction() as conn:
            conn.execute(DropTable(stage, if_exists=True))

    def stage(
        self, stage: sa.Table, shape: TableShape, rows: Sequence[CheckedRow]
    ) -> list[tuple[CheckedRow, str]]:
        """Stage a batch; return the rows that repeat a unique value of an earlier row."""
        repeats: list[tuple[CheckedRow, str]] = []
        with self._transaction() as conn:
            taken = self._existing(conn, stage, shape.key, [r.key for r in rows])
            kept: list[CheckedRow] = []
            for row in rows:
                if row.key in taken:
                    repeats.append((row, "repeats the key of an earlier row"))
                    continue
                taken.add(row.key)
                kept.append(row)
            for columns in shape.unique:
                values = {
                    i: tuple(row.values[c] for c in columns)
                    for i, row in enumerate(kept)
                    if row.values is not None
                }
                taken = self._existing(conn, stage, columns, list(values.values()))
                for i, value in values.items():
                    if value in taken:
                        repeats.append(
                            (kept[i], f"repeats the {', '.join(columns)} of another row")
                        )
                        kept[i] = CheckedRow(kept[i].key, None)  # keep its old version
                    taken.add(value)
            if kept:
                conn.execute(sa.insert(stage), [_stage_row(shape, row) for row in kept])
        return repeats

    def _existing(
        self,
        conn: sa.Connection,
        stage: sa.Table,
        columns: Sequence[str],
        values: Sequence[tuple[Any, ...]],
    ) -> set[tuple[Any, ...]]:
        """Return which of ``values`` (of ``columns``) the stage already holds."""
        found: set[tuple[Any, ...]] = set()
        target = sa.tuple_(*(stage.c[c] for c in columns))
        for start in range(0, len(values), _IN_CHUNK):
            chunk = values[start : start + _IN_CHUNK]
            where = (
                stage.c[columns[0]].in_([v[0] for v in chunk])
                if len(columns) == 1
                else target.in_(chunk)
            )
            query = sa.select(*(stage.c[c] for c in columns)).where(where)
            found.update(tuple(row) for row in conn.execute(query))
        return found

    def apply(self, stage: sa.Table, shape: TableShape, result: TableResult, now_ms: int) -> None:
        """Make the table equal to the stage in one transaction, and record its state."""
        t, s = shape.table, stage
        same_key = sa.and_(*(s.c[k] == t.c[k] for k in shape.key))
        with self._transaction(write=True) as conn:
            gone = sa.delete(t).where(~sa.exists().where(same_key))
            result.deleted = conn.execute(gone).rowcount
            changed = sa.delete(t).where(
                sa.exists().where(same_key, s.c.is_good, s.c.row_hash != t.c.row_hash)
            )
            result.changed = conn.execute(changed).rowcount
            for columns in shape.unique:
                # An old row kept for a bad source row, whose unique value a good row now has.
                taken = sa.delete(t).where(
                    sa.exists().where(s.c.is_good, ~same_key, *(s.c[c] == t.c[c] for c in columns))
                )
                result.deleted += conn.execute(taken).rowcount
            names = [*shape.columns, "row_hash"]
            added = sa.insert(t).from_select(
                [*names, "changed_ms"],
                sa.select(*(s.c[n] for n in names), sa.literal(now_ms, sa.BigInteger)).where(
                    s.c.is_good, ~sa.exists(sa.select(1).select_from(t).where(same_key))
                ),
            )
            # INSERT ... SELECT has a row count on demand only (SQLAlchemy 2).
            inserted = conn.execute(added, execution_options={"preserve_rowcount": True})
            result.new = inserted.rowcount - result.changed
            result.rows = conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            previous = _state(conn, t.name)
            last_changed = None if previous is None else previous.last_changed_ms
            if result.new or result.changed or result.deleted or last_changed is None:
                # Strictly later than the last change, even within one millisecond: the
                # kept reports (``api/reports.py``) tell new data by this moving.
                last_changed = now_ms if last_changed is None else max(now_ms, last_changed + 1)
            _put_state(
                conn,
                t.name,
                last_changed_ms=last_changed,
                last_import_ms=now_ms,
                last_success_ms=now_ms,
                row_count=result.rows,
                last_status="partial" if result.bad_count else "ok",
                last_error=_bad_rows_text(result) if result.bad_count else None,
                bad_rows=result.bad_count,
                source=result.source,
            )

    def record_failure(self, result: TableResult, now_ms: int) -> None:
        """Record that a table's import failed; its data and change time stay."""
        error = result.error or ""
        with self._transaction(write=True) as conn:
            _put_state(
                conn,
                result.table,
                last_import_ms=now_ms,
                last_status="failed",
                last_error=error[:_MAX_ERROR_CHARS],
                bad_rows=result.bad_count,
                source=result.source,
            )

    def states(self) -> dict[str, sa.Row[Any]]:
        """Return every row of ``ec_table_state`` by table name."""
        with self._transaction() as conn:
            rows = conn.execute(sa.select(ec_table_state)).all()
        return {row.table_name: row for row in rows}

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()
        self._engine.dispose()


def _stage_row(shape: TableShape, row: CheckedRow) -> dict[str, Any]:
    if row.values is None:
        return {
            **dict.fromkeys(shape.columns),
            **dict(zip(shape.key, row.key, strict=True)),
            "row_hash": None,
            "is_good": False,
        }
    return {**row.values, "row_hash": row.row_hash, "is_good": True}


def _state(conn: sa.Connection, table: str) -> sa.Row[Any] | None:
    query = sa.select(ec_table_state).where(ec_table_state.c.table_name == table)
    return conn.execute(query).first()


def _put_state(conn: sa.Connection, table: str, **values: Any) -> None:
    """Update or insert a table's state (under the apply lock)."""
    where = ec_table_state.c.table_name == table
    if not conn.execute(sa.update(ec_table_state).where(where).values(**values)).rowcount:
        conn.execute(sa.insert(ec_table_state).values(table_name=table, **values))


def _bad_rows_text(result: TableResult) -> str:
    text = f"{_count(result.bad_count, 'bad row')} skipped: " + "; ".join(map(str, result.bad))
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _store_error(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    return redact(str(exc).strip() or type(exc).__name__)


# --- health -----------------------------------------------------------------------------


def ec_import_health(settings: HopperSettings, now_ms: int) -> tuple[str | None, dict[str, Any]]:
    """Say what is wrong with the last imports (None: nothing), and the check's fields."""
    config = settings.ecimport
    tables = sorted(name for source in config.sources for name in source.tables)
    fields: dict[str, Any] = {"failed_tables": [], "bad_rows": None, "last_success_age_s": None}
    try:
        reference = ReferenceStore(settings.store)
        try:
            states = reference.states()
        finally:
            reference.close()
    except (HopperError, SQLAlchemyError) as exc:
        return f"cannot read ec_table_state: {redact(str(exc))}", fields
    known = [states[t] for t in tables if t in states]
    failed = [row.table_name for row in known if row.last_status == "failed"]
    fields["failed_tables"] = failed
    fields["bad_rows"] = sum(row.bad_rows or 0 for row in known)
    successes = [row.last_success_ms for row in known]
    if known and None not in successes:
        fields["last_success_age_s"] = round((now_ms - min(successes)) / 1000, 3)
    never = [t for t in tables if t not in states or states[t].last_success_ms is None]
    if failed:
        first = states[failed[0]]
        return f"the last import of {', '.join(failed)} failed: {first.last_error}", fields
    if never:
        return f"never imported yet: {', '.join(never)}", fields
    age = fields["last_success_age_s"]
    if age is not None and age > 2 * config.interval_secs:
        return (
            f"the oldest successful import is {age:.0f} s old, over twice "
            f"ecimport.interval_secs ({config.interval_secs})",
            fields,
        )
    return None, fields
