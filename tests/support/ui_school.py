"""A small seeded school for the page tests: 2 classes, 2 teachers, staff, IT and admin users.

The reference data goes through the real e-content import (an SQLite "school database"),
the events through real ingest (``POST /v1/events``), the analytics through the real
processing job; then one account per role is made with ``UserStore``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hopper.access import Role, UserStore
from hopper.config import HopperSettings, load_settings
from hopper.edge.jobs import EDGE_JOBS
from hopper.simulate.demo import (
    history_batches,
    reference_rows,
    reference_source,
    write_reference_db,
)
from hopper.simulate.school import SimulatedSchool
from hopper.store.engine import engine_for

PASSWORD = "correct horse battery"
USERS = {
    "teacher1": Role.TEACHER,  # teaches 5a
    "teacher2": Role.TEACHER,  # teaches 5b
    "staff": Role.STAFF,
    "it": Role.IT,
    "admin": Role.ADMIN,
}
STUDENTS = 10
CLASSES = 2


@dataclass
class SeededSchool:
    """What a seeded school's tests need to know."""

    settings: HopperSettings
    school: SimulatedSchool
    reference: dict[str, list[tuple[Any, ...]]]

    def names_of_class(self, class_id: str) -> set[str]:
        """The display names of a class's students."""
        members = {st for c, st in self.reference["ec_class_members"] if c == class_id}
        return {row[2] for row in self.reference["ec_students"] if row[0] in members}


def school_settings(tmp: Path, **overrides: Any) -> HopperSettings:
    """Settings of a fresh store with the demo school's reference source configured."""
    school = SimulatedSchool(STUDENTS)
    reference = reference_rows(school, CLASSES)
    db = write_reference_db(tmp / "school.db", reference)
    overrides["store"] = {"sqlite_path": tmp / "events.db", **overrides.get("store", {})}
    return load_settings(ecimport={"sources": [reference_source(db)]}, **overrides)


def seed_school(settings: HopperSettings, post: Any, token: str, now_ms: int) -> SeededSchool:
    """Import the reference data, post a week of events with ``post``, process, add users."""
    school = SimulatedSchool(STUDENTS)
    reference = reference_rows(school, CLASSES)
    EDGE_JOBS["ec-import"].run(settings, _Clock(now_ms))
    for batch in history_batches(school, now_ms, days=7, batch_events=400):
        post(batch, token)
    EDGE_JOBS["process"].run(settings, _Clock(now_ms))
    engine = engine_for(settings.store)
    try:
        users = UserStore(engine)
        for username, role in USERS.items():
            teacher_id = f"t{username[-1]}" if role == Role.TEACHER else None
            users.add(username, role, PASSWORD, now_ms, teacher_id=teacher_id)
    finally:
        engine.dispose()
    return SeededSchool(settings, school, reference)


class _Clock:
    def __init__(self, now_ms: int) -> None:
        self.now = now_ms

    def now_ms(self) -> int:
        return self.now
