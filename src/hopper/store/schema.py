"""The event tables, defined once (SQLAlchemy Core), and how a migration step is written.

Each table is written once and compiled to each dialect's DDL (SQLite: ``INTEGER PRIMARY
KEY`` row ids, ``WITHOUT ROWID`` key tables, JSON as TEXT; PostgreSQL: identity columns,
JSONB, BYTEA). A migration is a list of steps (create a table or an index, add a column);
``hopper.store.migrations`` orders every part's migrations and applies them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.schema import CreateIndex, CreateTable, ExecutableDDLElement

logger = logging.getLogger(__name__)

VERSION_TABLE = "hopper_schema_version"

metadata = sa.MetaData()

# A row id: INTEGER PRIMARY KEY is the rowid itself on SQLite; an identity on PostgreSQL.
ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON_TEXT = sa.Text().with_variant(postgresql.JSONB(), "postgresql")
MILLIS = sa.BigInteger  # Unix time in milliseconds


def _id() -> sa.Column[Any]:
    return sa.Column("id", ROW_ID, sa.Identity(always=True), primary_key=True)


reader_events = sa.Table(
    "reader_events",
    metadata,
    _id(),
    sa.Column("app_time_ms", MILLIS, nullable=False),
    sa.Column("received_ms", MILLIS, nullable=False),
    sa.Column("username", sa.Text, nullable=False),
    sa.Column("device_id", sa.Text, nullable=False),
    sa.Column("school_id", sa.Text, nullable=False),
    sa.Column("app_version", sa.Text, nullable=False),
    sa.Column("platform", sa.Text, nullable=False),
    sa.Column("session_id", sa.Text, nullable=False),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("book_id", sa.Text),
    sa.Column("page", sa.Integer),
    sa.Column("payload", JSON_TEXT, nullable=False),
    sa.Column("hash", sa.LargeBinary, nullable=False),
)

# The dedup index: time-prefixed, so inserts and lookups touch only the recent pages.
raw_events = sa.Table(
    "raw_events",
    metadata,
    sa.Column("app_time_ms", MILLIS, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.LargeBinary, primary_key=True),
    sa.Column("received_ms", MILLIS, nullable=False),
    sa.Column("raw", sa.LargeBinary, nullable=False),
    sqlite_with_rowid=False,
)

reader_events_errors = sa.Table(
    "reader_events_errors",
    metadata,
    _id(),
    sa.Column("received_ms", MILLIS, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("raw", sa.LargeBinary, nullable=False),
    sa.Column("raw_size", MILLIS),  # added by migration 2
    sa.Column("raw_hash", sa.LargeBinary),  # added by migration 2
)
errors_received = sa.Index("reader_events_errors_received", reader_events_errors.c.received_ms)

hopper_tokens = sa.Table(
    "hopper_tokens",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("secret_hash", sa.LargeBinary, nullable=False),
    sa.Column("scopes", sa.Text, nullable=False),
    sa.Column("schools", sa.Text),
    sa.Column("created_ms", MILLIS, nullable=False),
    sa.Column("revoked_ms", MILLIS),
    # Whose data an API token may read: "student:<username>" or "teacher:<teacher_id>".
    sa.Column("subject", sa.Text),  # added by migration 7
)

dedup_keys = sa.Table(
    "dedup_keys",
    metadata,
    sa.Column("namespace", sa.Text, primary_key=True),
    sa.Column("key", sa.LargeBinary, primary_key=True),
    sa.Column("claimed_ms", MILLIS, nullable=False),
    sqlite_with_rowid=False,
)
dedup_claimed = sa.Index("dedup_keys_claimed", dedup_keys.c.claimed_ms)

# One row per run of a scheduled job (hopper.jobs.history): devops and /health read it.
hopper_job_runs = sa.Table(
    "hopper_job_runs",
    metadata,
    _id(),
    sa.Column("job", sa.Text, nullable=False),
    sa.Column("started_ms", MILLIS, nullable=False),
    sa.Column("finished_ms", MILLIS, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # "ok" or "failed"
    sa.Column("summary", sa.Text, nullable=False),  # the job's summary, or the error
)
job_runs_by_job = sa.Index("hopper_job_runs_job", hopper_job_runs.c.job, hopper_job_runs.c.id)


def _index_devices(dialect: Dialect) -> str:
    # devops lists each device's latest event: its index avoids sorting the whole table.
    return "CREATE INDEX reader_events_device ON reader_events (device_id, id)"


DIALECTS: dict[str, Dialect] = {
    "sqlite": sqlite.dialect(),
    "postgres": postgresql.dialect(),  # type: ignore[no-untyped-call]
}

Step = ExecutableDDLElement | Callable[[Dialect], str]


def create_table(table: sa.Table, *, without: Sequence[str] = ()) -> ExecutableDDLElement:
    """Create ``table`` as it was before its columns ``without`` were added."""
    if not without:
        return CreateTable(table)
    earlier = sa.Table(
        table.name,
        sa.MetaData(),
        *(c._copy() for c in table.columns if c.name not in without),  # noqa: SLF001 - as Table.to_metadata copies
        **table.kwargs,
    )
    return CreateTable(earlier)


def add_column(table: sa.Table, name: str) -> Callable[[Dialect], str]:
    """Add a (nullable) column of ``table``'s definition."""
    column = table.c[name]

    def ddl(dialect: Dialect) -> str:
        return f"ALTER TABLE {table.name} ADD COLUMN {name} {column.type.compile(dialect)}"

    return ddl


@dataclass(frozen=True)
class Migration:
    """One schema step, written once for every dialect."""

    version: int
    description: str
    steps: tuple[Step, ...]

    def statements(self, dialect: str) -> list[str]:
        """Return the step's DDL in ``dialect`` ("sqlite" or "postgres")."""
        compiled = DIALECTS[dialect]
        return [
            str(step.compile(dialect=compiled)).strip()
            if isinstance(step, ExecutableDDLElement)
            else step(compiled)
            for step in self.steps
        ]


# The event tables' migrations; hopper.store.migrations adds those of other parts.
CORE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "reader_events, raw_events (time-prefixed dedup key), reader_events_errors",
        (
            CreateTable(reader_events),
            CreateTable(raw_events),
            create_table(reader_events_errors, without=("raw_size", "raw_hash")),
            CreateIndex(errors_received),
        ),
    ),
    Migration(
        2,
        "reader_events_errors keeps the full size and hash of bytes it keeps only a prefix of",
        (
            add_column(reader_events_errors, "raw_size"),
            add_column(reader_events_errors, "raw_hash"),
        ),
    ),
    Migration(
        3,
        "hopper_tokens: access tokens, stored as hashes",
        (create_table(hopper_tokens, without=("subject",)),),
    ),
    Migration(
        4,
        "dedup_keys: the DedupIndex of stages that dedup on other keys than the raw bytes",
        (CreateTable(dedup_keys), CreateIndex(dedup_claimed)),
    ),
    Migration(
        7,
        "hopper_tokens.subject: an API token bound to one student or one teacher",
        (add_column(hopper_tokens, "subject"),),
    ),
    Migration(
        8,
        "hopper_job_runs (the last runs of each job); reader_events by (device_id, id)",
        (CreateTable(hopper_job_runs), CreateIndex(job_runs_by_job), _index_devices),
    ),
)
