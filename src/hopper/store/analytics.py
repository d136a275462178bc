"""The derived analytics tables (``an_*``), defined once (SQLAlchemy Core), and their migration.

``hopper job process`` (``hopper.edge.processing``) fills them from ``reader_events`` and
the reference data (``ec_*``). Every table is keyed by ``username``, the events' join key
to ``ec_students``: the keys stay the same whether or not the reference import has run.
Every row carries the ``run_id`` of the run of ``an_runs`` that last wrote it, and that row
holds the settings used. Definitions of every column: docs/analytics.md.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.schema import CreateIndex, CreateTable

from hopper.store.schema import JSON_TEXT, MILLIS, ROW_ID, Migration

metadata = sa.MetaData()

COUNT = sa.Integer
REAL: sa.types.TypeEngine[float] = sa.Double().with_variant(
    sa.REAL(), "sqlite"
)  # double precision on PostgreSQL


def _text(name: str, **kwargs: Any) -> sa.Column[Any]:
    return sa.Column(name, sa.Text, nullable=False, **kwargs)


def _count(name: str) -> sa.Column[Any]:
    return sa.Column(name, COUNT, nullable=False)


def _ms(name: str, *, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, MILLIS, nullable=nullable)


def _run_id() -> sa.Column[Any]:
    return sa.Column("run_id", MILLIS, nullable=False)


an_runs = sa.Table(
    "an_runs",
    metadata,
    sa.Column("run_id", ROW_ID, sa.Identity(always=True), primary_key=True),
    _ms("started_ms"),
    _ms("finished_ms", nullable=True),  # NULL while the run's transaction is open
    _text("mode"),  # "full" or "incremental"
    _text("reason"),  # why: "first run", "settings changed", "new events", ...
    _ms("from_event_id"),  # reader_events.id: the run processed from_event_id < id <= to_event_id
    _ms("to_event_id"),
    _count("new_events"),
    _count("student_days"),  # (student, day) groups recomputed
    _ms("as_of_ms"),  # the clock: "today" for streaks, due cards and needs-help rules
    sa.Column("settings", JSON_TEXT, nullable=False),  # [processing] as used
    sa.Column("reference", JSON_TEXT, nullable=False),  # digests of the reference data, days
)

an_sessions = sa.Table(
    "an_sessions",
    metadata,
    _text("username", primary_key=True),
    _text("day", primary_key=True),  # YYYY-MM-DD in the school's time zone
    sa.Column("session_no", COUNT, primary_key=True, autoincrement=False),  # 1, 2... in the day
    _text("school_id"),
    _ms("start_ms"),  # app time of the first event
    _ms("end_ms"),  # app time of the last event
    _text("end_reason"),  # app_session_ended | app_session_started | gap | last_of_day
    _count("events"),
    _count("page_views"),
    _count("pages_read"),
    _count("books_read"),
    _ms("reading_ms"),
    _ms("active_ms"),
    _run_id(),
    sqlite_with_rowid=False,
)

an_page_days = sa.Table(
    "an_page_days",
    metadata,
    _text("username", primary_key=True),
    _text("book_id", primary_key=True),
    sa.Column("page", COUNT, primary_key=True, autoincrement=False),
    _text("day", primary_key=True),
    _count("views"),
    _ms("reading_ms"),
    _ms("last_view_ms"),
    _run_id(),
    sqlite_with_rowid=False,
)
page_days_by_day = sa.Index("an_page_days_day", an_page_days.c.username, an_page_days.c.day)

an_student_days = sa.Table(
    "an_student_days",
    metadata,
    _text("username", primary_key=True),
    _text("day", primary_key=True),
    sa.Column("day_no", COUNT, nullable=False),  # days since 1970-01-01, local
    _text("school_id"),
    _ms("first_ms"),
    _ms("last_ms"),
    _count("sessions"),
    _ms("active_ms"),
    _count("page_views"),
    _count("pages_read"),
    _count("books_read"),
    _ms("reading_ms"),
    _count("flashcard_reviews"),
    _count("lp_steps"),
    _count("resources_opened"),
    _count("is_active"),  # 1 or 0
    _run_id(),
    sqlite_with_rowid=False,
)

an_students = sa.Table(
    "an_students",
    metadata,
    _text("username", primary_key=True),
    _text("school_id"),  # of the student's latest day
    _text("time_zone"),  # the school's, or UTC
    _text("first_day"),
    _text("last_day"),
    sa.Column("last_active_day", sa.Text),
    sa.Column("last_reading_day", sa.Text),
    _count("active_days"),
    _count("current_streak"),
    _count("longest_streak"),
    _ms("reading_ms"),
    _ms("active_ms"),
    _text("as_of_day"),
    _run_id(),
    sqlite_with_rowid=False,
)

an_student_books = sa.Table(
    "an_student_books",
    metadata,
    _text("username", primary_key=True),
    _text("book_id", primary_key=True),
    sa.Column("page_count", COUNT),  # ec_books.page_count; NULL when unknown
    _count("pages_read"),
    _count("page_views"),
    _ms("reading_ms"),
    _count("last_page"),
    _ms("last_view_ms"),
    _count("days_read"),
    _text("first_day"),
    _text("last_day"),
    sa.Column("completion", REAL),  # share of the book's pages read; NULL when unknown
    sa.Column("is_completed", COUNT),  # 1 or 0; NULL when unknown
    _run_id(),
    sqlite_with_rowid=False,
)

an_flashcard_cards = sa.Table(
    "an_flashcard_cards",
    metadata,
    _text("username", primary_key=True),
    _text("deck_id", primary_key=True),
    _text("card_id", primary_key=True),
    _count("reviews"),
    _ms("first_review_ms"),
    _count("first_grade"),
    _count("lapses"),
    _count("review_state_reviews"),  # reviews made while the card was in FSRS Review state
    _count("review_state_passes"),
    _count("fsrs_state"),  # 1 Learning, 2 Review, 3 Relearning
    sa.Column("fsrs_step", COUNT),
    sa.Column("stability", REAL, nullable=False),
    sa.Column("difficulty", REAL, nullable=False),
    _ms("due_ms"),
    _ms("last_review_ms"),
    _ms("last_review_id"),  # reader_events.id of the last review replayed
    _count("last_grade"),
    _run_id(),
    sqlite_with_rowid=False,
)

an_flashcard_decks = sa.Table(
    "an_flashcard_decks",
    metadata,
    _text("username", primary_key=True),
    _text("deck_id", primary_key=True),
    _count("cards_studied"),
    _count("reviews"),
    _count("first_try_correct"),
    sa.Column("first_try_share", REAL, nullable=False),
    _count("lapses"),
    _count("mastered_cards"),
    _count("retention_reviews"),  # reviews of cards in FSRS Review state
    _count("retention_passes"),
    sa.Column("retention", REAL),  # NULL before any review of a card in Review state
    _count("due_today"),
    _count("due_tomorrow"),
    _ms("last_review_ms"),
    _text("as_of_day"),
    _run_id(),
    sqlite_with_rowid=False,
)

an_lp_step_days = sa.Table(
    "an_lp_step_days",
    metadata,
    _text("username", primary_key=True),
    _text("lp_id", primary_key=True),
    _text("step_id", primary_key=True),
    _text("day", primary_key=True),
    _count("attempts"),
    _count("failed_attempts"),
    sa.Column("best_score", REAL, nullable=False),
    _ms("first_ms"),
    _ms("first_passed_ms", nullable=True),
    _ms("last_ms"),
    _run_id(),
    sqlite_with_rowid=False,
)
lp_step_days_by_day = sa.Index(
    "an_lp_step_days_day", an_lp_step_days.c.username, an_lp_step_days.c.day
)

an_learning_paths = sa.Table(
    "an_learning_paths",
    metadata,
    _text("username", primary_key=True),
    _text("lp_id", primary_key=True),
    sa.Column("steps_total", COUNT),  # steps in ec_lp_steps; NULL when the path is unknown
    _count("steps_done"),
    _count("steps_passed"),
    _count("attempts"),
    _count("failed_attempts"),
    sa.Column("score", REAL, nullable=False),
    sa.Column("progress", REAL),  # steps of the path done / steps_total; NULL when unknown
    _ms("completed_ms", nullable=True),
    _ms("first_ms"),
    _ms("last_ms"),
    _run_id(),
    sqlite_with_rowid=False,
)

an_needs_help = sa.Table(
    "an_needs_help",
    metadata,
    _text("username", primary_key=True),
    _text("rule", primary_key=True),  # failed_step | no_reading | low_retention
    _text("subject", primary_key=True),  # lp_id/step_id, deck_id, or "" (the student)
    sa.Column("value", REAL),
    sa.Column("threshold", REAL, nullable=False),
    _text("detail"),
    _text("as_of_day"),
    _run_id(),
    sqlite_with_rowid=False,
)


def _index_reader_events(dialect: Dialect) -> str:
    # Processing reads a student's events of a day; without this it would scan the table.
    # Written as DDL so that the core table's definition (hopper.store.schema) is untouched.
    return "CREATE INDEX reader_events_user_time ON reader_events (username, app_time_ms)"


ANALYTICS_TABLES: tuple[sa.Table, ...] = (
    an_runs,
    an_sessions,
    an_page_days,
    an_student_days,
    an_students,
    an_student_books,
    an_flashcard_cards,
    an_flashcard_decks,
    an_lp_step_days,
    an_learning_paths,
    an_needs_help,
)

ANALYTICS_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        6,
        "analytics: an_* derived tables, reader_events by (username, app_time_ms)",
        (
            *(CreateTable(table) for table in ANALYTICS_TABLES),
            CreateIndex(page_days_by_day),
            CreateIndex(lp_step_days_by_day),
            _index_reader_events,
        ),
    ),
)
