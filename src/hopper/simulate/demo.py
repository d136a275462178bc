"""The demo school's reference data and history, so the pages have something to show.

``write_reference_db`` writes the simulated school (its students, classes, teachers,
books and learning paths) into an SQLite file that the e-content import reads like any
school's database (``reference_source`` is its ``[[ecimport.sources]]`` entry).
``history_batches`` makes the last days' events of the same students, in time order, for
posting to ``/v1/events`` before the live traffic starts.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hopper.events.protobuf import encode_batch
from hopper.simulate.school import BOOKS, PATHS, SimulatedSchool

DAY_MS = 86_400_000
FIRST_NAMES = [
    "Ana", "Luka", "Mia", "Jan", "Zala", "Nik", "Eva", "Tim", "Lara", "Žan", "Nina", "Maj",
    "Amira", "Omar", "Lea", "Filip", "Sara", "Vid", "Ema", "Gal", "Julija", "Tilen", "Hana",
    "Yusuf", "Klara", "Rok", "Pia", "Aljaž", "Noor", "Mark",
]  # fmt: skip
LAST_INITIALS = "BČDFGHJKLMNPRSŠTVZŽ"
TEACHERS = ["Novak", "Horvat", "Kovačič", "Krajnc", "Zupančič", "Potočnik", "Mlakar", "Vidmar"]
BOOK_PAGES = 48
PATH_STEPS = 5

# Table -> the columns the import reads (the SQLite file has one table of each name).
COLUMNS: dict[str, tuple[str, ...]] = {
    "ec_schools": ("school_id", "name", "time_zone"),
    "ec_students": ("student_id", "username", "display_name", "school_id", "grade"),
    "ec_classes": ("class_id", "school_id", "name", "grade"),
    "ec_class_members": ("class_id", "student_id"),
    "ec_teachers": ("teacher_id", "username", "display_name", "school_id"),
    "ec_class_teachers": ("class_id", "teacher_id"),
    "ec_books": ("book_id", "title", "page_count", "language"),
    "ec_learning_paths": ("lp_id", "title"),
    "ec_lp_steps": ("lp_id", "step_id", "position", "title"),
}


def class_ids(classes: int) -> list[str]:
    """The demo's class ids: 5a, 5b, 6a, 6b..."""
    return [f"{5 + n // 2}{'ab'[n % 2]}" for n in range(classes)]


def reference_rows(
    school: SimulatedSchool, classes: int, *, school_id: str = "school-001", seed: int = 7
) -> dict[str, list[tuple[Any, ...]]]:
    """The reference rows of the simulated school, one list of tuples per table."""
    rng = random.Random(seed)
    ids = class_ids(classes)
    students = [
        (
            f"st-{n:04d}",
            s.username,
            f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_INITIALS)}.",
            school_id,
            ids[n % classes][0],
        )
        for n, s in enumerate(school.students)
    ]
    return {
        "ec_schools": [(school_id, "Demo primary school", "Europe/Ljubljana")],
        "ec_students": students,
        "ec_classes": [(c, school_id, f"{c[0]}.{c[1:]}", c[0]) for c in ids],
        "ec_class_members": [(ids[n % classes], st[0]) for n, st in enumerate(students)],
        "ec_teachers": [
            (f"t{n + 1}", f"teacher{n + 1}", f"{TEACHERS[n % len(TEACHERS)]}", school_id)
            for n in range(classes)
        ],
        "ec_class_teachers": [(c, f"t{n + 1}") for n, c in enumerate(ids)],
        "ec_books": [(b, f"Story {b[-3:]}", BOOK_PAGES, "en") for b in BOOKS],
        "ec_learning_paths": [(p, f"Path {p[-2:]}") for p in PATHS],
        "ec_lp_steps": [
            (p, f"{p}-step-{k}", k, f"Step {k}") for p in PATHS for k in range(1, PATH_STEPS + 1)
        ],
    }


def write_reference_db(path: Path, rows: dict[str, list[tuple[Any, ...]]]) -> Path:
    """Write the reference rows into a fresh SQLite file (the demo's "school database")."""
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as db:
        for table, columns in COLUMNS.items():
            db.execute(f"CREATE TABLE {table} ({', '.join(columns)})")
            marks = ", ".join("?" * len(columns))
            db.executemany(f"INSERT INTO {table} VALUES ({marks})", rows[table])  # noqa: S608
    db.close()
    return path


def reference_source(path: Path) -> dict[str, Any]:
    """The ``[[ecimport.sources]]`` entry that imports the file ``write_reference_db`` wrote."""
    return {
        "kind": "sql",
        "name": "demo-school",
        "url": f"sqlite:///{path}",
        "tables": {
            table: f"SELECT {', '.join(columns)} FROM {table}"  # noqa: S608 - fixed names
            for table, columns in COLUMNS.items()
        },
    }


def history_batches(
    school: SimulatedSchool,
    now_ms: int,
    *,
    days: int = 14,
    batch_events: int = 500,
    seed: int = 11,
) -> Iterator[bytes]:
    """Yield encoded batches of the last ``days`` days of school, oldest first, up to now.

    Each school day, most students open the app for a session or two in the morning; at
    weekends a few do. Times are strictly increasing per student, so the live simulator
    (which stamps "now") carries on after them.
    """
    rng = random.Random(seed)
    start_day = (now_ms // DAY_MS - days + 1) * DAY_MS
    pending = []
    for day in range(days):
        day_ms = start_day + day * DAY_MS
        weekday = (day_ms // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday; 0 is Monday
        share = 0.8 if weekday < 5 else 0.15
        for student in school.students:
            if rng.random() > share:
                continue
            at = day_ms + rng.randint(7 * 3_600_000, 12 * 3_600_000)
            for _ in range(rng.randint(15, 60)):
                if at >= now_ms - 60_000:
                    break
                pending.append(student.next_event(at))
                at += rng.randint(8_000, 45_000)
            if len(pending) >= batch_events:
                yield encode_batch(pending)
                pending = []
    if pending:
        yield encode_batch(pending)
