"""The reference data tables (``ec_*``), defined once (SQLAlchemy Core), and their migration.

The e-content import (``hopper.edge.ecimport``) fills them from the schools' own sources;
the analytics join events to them by ``username``. Every data table has ``row_hash`` (a
hash of the row's values) and ``changed_ms`` (when that row last really changed), and
``ec_table_state`` keeps one row per table: when it last changed, when it was last
imported, and how that went. The uploader sends only tables whose ``last_changed_ms`` moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

import sqlalchemy as sa
from sqlalchemy.schema import CreateIndex, CreateTable

from hopper.config import EcTableName
from hopper.store.schema import MILLIS, Migration

metadata = sa.MetaData()


def _table(name: str, *columns: sa.Column[Any] | sa.Constraint) -> sa.Table:
    """A reference table: its columns, then ``row_hash`` and ``changed_ms``."""
    return sa.Table(
        name,
        metadata,
        *columns,
        sa.Column("row_hash", sa.LargeBinary, nullable=False),
        sa.Column("changed_ms", MILLIS, nullable=False),
        sqlite_with_rowid=False,
    )


def _key(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.Text, primary_key=True)


ec_schools = _table(
    "ec_schools",
    _key("school_id"),
    sa.Column("name", sa.Text),
    # An IANA name (Europe/Rome): the analytics compute a school's days in it.
    sa.Column("time_zone", sa.Text, nullable=False, server_default="UTC"),
)
ec_students = _table(
    "ec_students",
    _key("student_id"),
    sa.Column("username", sa.Text, nullable=False, unique=True),  # the events' join key
    sa.Column("display_name", sa.Text),
    sa.Column("school_id", sa.Text),
    sa.Column("grade", sa.Text),
)
ec_classes = _table(
    "ec_classes",
    _key("class_id"),
    sa.Column("school_id", sa.Text),
    sa.Column("name", sa.Text),
    sa.Column("grade", sa.Text),
)
ec_class_members = _table("ec_class_members", _key("class_id"), _key("student_id"))
ec_teachers = _table(
    "ec_teachers",
    _key("teacher_id"),
    sa.Column("username", sa.Text, nullable=False, unique=True),
    sa.Column("display_name", sa.Text),
    sa.Column("school_id", sa.Text),
)
ec_class_teachers = _table("ec_class_teachers", _key("class_id"), _key("teacher_id"))
ec_books = _table(
    "ec_books",
    _key("book_id"),
    sa.Column("title", sa.Text),
    sa.Column("page_count", sa.Integer),
    sa.Column("language", sa.Text),
)
ec_resources = _table(
    "ec_resources",
    _key("resource_id"),
    sa.Column("book_id", sa.Text),
    sa.Column("title", sa.Text),
    sa.Column("kind", sa.Text),
)
ec_learning_paths = _table("ec_learning_paths", _key("lp_id"), sa.Column("title", sa.Text))
ec_lp_steps = _table(
    "ec_lp_steps",
    _key("lp_id"),
    _key("step_id"),
    sa.Column("position", sa.Integer),
    sa.Column("title", sa.Text),
)

ec_table_state = sa.Table(
    "ec_table_state",
    metadata,
    sa.Column("table_name", sa.Text, primary_key=True),
    sa.Column("last_changed_ms", MILLIS),  # a row was added, changed or deleted
    sa.Column("last_import_ms", MILLIS),  # the last attempt, whatever its outcome
    sa.Column("row_count", sa.Integer),
    sa.Column("last_status", sa.Text),  # "ok", "partial" (bad rows skipped) or "failed"
    sa.Column("last_error", sa.Text),
    sa.Column("last_success_ms", MILLIS),  # the last attempt that replaced the data
    sa.Column("bad_rows", sa.Integer),  # rows of the last attempt that were reported
    sa.Column("source", sa.Text),  # the name of the source that provides the table
)

# Lookups the analytics make the other way round: a student's classes, a book's resources.
_INDEXES = (
    sa.Index("ec_class_members_student", ec_class_members.c.student_id),
    sa.Index("ec_class_teachers_teacher", ec_class_teachers.c.teacher_id),
    sa.Index("ec_resources_book", ec_resources.c.book_id),
)

# The data tables, in the order the import runs them (parents before children).
REFERENCE_TABLES: dict[str, sa.Table] = {
    t.name: t
    for t in (
        ec_schools,
        ec_students,
        ec_classes,
        ec_class_members,
        ec_teachers,
        ec_class_teachers,
        ec_books,
        ec_resources,
        ec_learning_paths,
        ec_lp_steps,
    )
}
if set(REFERENCE_TABLES) != set(get_args(EcTableName)):
    raise RuntimeError("hopper.config.EcTableName must list exactly the reference tables")

# Columns every data table has besides its own: they are computed, never imported.
TRACKING_COLUMNS = ("row_hash", "changed_ms")


@dataclass(frozen=True)
class TableShape:
    """What the import needs to know of a reference table."""

    table: sa.Table
    key: tuple[str, ...]  # the primary key's columns
    columns: tuple[str, ...]  # every imported column, key first, in table order
    unique: tuple[tuple[str, ...], ...]  # other column sets that must be unique


def table_shape(name: str) -> TableShape:
    """Return the shape of the reference table ``name``."""
    table = REFERENCE_TABLES[name]
    key = tuple(c.name for c in table.primary_key.columns)
    columns = tuple(c.name for c in table.columns if c.name not in TRACKING_COLUMNS)
    unique = tuple(
        tuple(c.name for c in constraint.columns)
        for constraint in table.constraints
        if isinstance(constraint, sa.UniqueConstraint)
    )
    return TableShape(table, key, columns, unique)


REFERENCE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        5,
        "reference data: ec_* tables with row hashes, and ec_table_state",
        (
            *(CreateTable(t) for t in REFERENCE_TABLES.values()),
            CreateTable(ec_table_state),
            *(CreateIndex(index) for index in _INDEXES),
        ),
    ),
)
