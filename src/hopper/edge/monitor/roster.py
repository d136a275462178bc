"""Who is who: students, their classes and the books, from the imported reference tables.

The monitor names each device by the student whose username its events carry
(``ec_students``), places it in that student's classes (``ec_class_members``,
``ec_classes``) and shows "page n of N" from ``ec_books``. The tables change once a day
(``hopper job ec-import``), so the roster is reloaded only when a cheap signature of them
(row counts and newest ``changed_ms``) moves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from hopper.store.reference import ec_books, ec_class_members, ec_classes, ec_students


@dataclass(frozen=True, slots=True)
class StudentRef:
    """A student of a class, as the monitor names them."""

    student_id: str
    username: str
    display_name: str | None

    def as_dict(self) -> dict[str, Any]:
        """Return the student as JSON-ready fields."""
        return {
            "student_id": self.student_id,
            "username": self.username,
            "display_name": self.display_name,
        }


@dataclass(frozen=True, slots=True)
class ClassRef:
    """A class: its id, name and school."""

    class_id: str
    name: str | None
    school_id: str | None


@dataclass
class Roster:
    """The reference data the monitor reads, indexed for its lookups."""

    students: dict[str, StudentRef] = field(default_factory=dict)  # by username
    classes: dict[str, ClassRef] = field(default_factory=dict)  # by class id
    members: dict[str, tuple[StudentRef, ...]] = field(default_factory=dict)  # by class id
    classes_of: dict[str, frozenset[str]] = field(default_factory=dict)  # by username
    books: dict[str, tuple[str | None, int | None]] = field(default_factory=dict)  # title, pages
    signature: tuple[Any, ...] = ()

    def classes_of_user(self, username: str) -> frozenset[str]:
        """Return the classes of the student with ``username`` (none if unknown)."""
        return self.classes_of.get(username, frozenset())


_TABLES: Sequence[sa.Table] = (ec_students, ec_class_members, ec_classes, ec_books)


def roster_signature(conn: sa.Connection) -> tuple[Any, ...]:
    """Return what changes when the roster's tables change: counts and newest change times."""
    out: list[Any] = []
    for table in _TABLES:
        row = conn.execute(
            sa.select(sa.func.count(), sa.func.max(table.c.changed_ms)).select_from(table)
        ).one()
        out += [int(row[0]), None if row[1] is None else int(row[1])]
    return tuple(out)


def load_roster(conn: sa.Connection, signature: tuple[Any, ...]) -> Roster:
    """Read the roster's tables into a ``Roster`` stamped with ``signature``."""
    roster = Roster(signature=signature)
    by_id: dict[str, StudentRef] = {}
    for row in conn.execute(
        sa.select(ec_students.c.student_id, ec_students.c.username, ec_students.c.display_name)
    ):
        student = StudentRef(row.student_id, row.username, row.display_name)
        by_id[row.student_id] = student
        roster.students[row.username] = student
    for class_id, name, school_id in conn.execute(
        sa.select(ec_classes.c.class_id, ec_classes.c.name, ec_classes.c.school_id)
    ):
        roster.classes[class_id] = ClassRef(class_id, name, school_id)
    members: dict[str, list[StudentRef]] = {}
    classes_of: dict[str, set[str]] = {}
    for class_id, student_id in conn.execute(
        sa.select(ec_class_members.c.class_id, ec_class_members.c.student_id).order_by(
            ec_class_members.c.class_id, ec_class_members.c.student_id
        )
    ):
        member = by_id.get(student_id)
        if member is None or class_id not in roster.classes:
            continue  # a member row whose student or class is gone: nothing to show
        members.setdefault(class_id, []).append(member)
        classes_of.setdefault(member.username, set()).add(class_id)
    roster.members = {k: tuple(v) for k, v in members.items()}
    roster.classes_of = {k: frozenset(v) for k, v in classes_of.items()}
    for book_id, title, page_count in conn.execute(
        sa.select(ec_books.c.book_id, ec_books.c.title, ec_books.c.page_count)
    ):
        roster.books[book_id] = (title, page_count)
    return roster
