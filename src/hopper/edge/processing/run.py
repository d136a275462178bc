"""One processing run: find what changed since the last run, recompute it, record the run.

A run reads the last row of ``an_runs`` (its watermark ``to_event_id``, the settings and
reference digests it used) and decides:

- *full*: no run yet, other settings, another time zone for some school, or fewer events
  than the watermark (a restored store): every derived row is recomputed;
- *incremental*: rows of ``reader_events`` with ``id`` above the watermark are new; the
  (student, local day) groups they fall in are recomputed from all of those days' events,
  however old the days (a tablet back online after a week), and so are the books, decks
  and learning paths those days touch; the per-student tables, the deck due counts and
  the needs-help flags are recomputed whole, since they depend on today;
- *nothing*: no new row, the same settings, reference data and "today": nothing is
  written at all, so running again changes nothing.

The work happens in temporary tables, outside any write transaction (ingest goes on);
then one write transaction replaces the recomputed rows and inserts the run's row, after
checking that no other run got in first (the SQLite write lock or, on PostgreSQL, an
advisory lock serialise that last step).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson

from hopper.clock import Clock
from hopper.config import HopperSettings, ProcessingSettings
from hopper.edge.processing import daily, flashcards, learning_paths, needs_help, reading
from hopper.edge.processing.db import ProcessingDb
from hopper.edge.processing.timezones import DAY_MS, Today, fill_time_tables, today_in
from hopper.store import open_event_store

logger = logging.getLogger(__name__)

RESULT_SETTINGS_EXCLUDE = {"interval_secs", "writers_wait_secs"}  # these do not shape results


@dataclass(frozen=True)
class LastRun:
    """What the previous run recorded."""

    run_id: int
    to_event_id: int
    settings: dict[str, Any]
    reference: dict[str, Any]


def _json(value: Any) -> Any:
    # SQLite returns JSON columns as text, psycopg as parsed values.
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _digest(rows: list[tuple[Any, ...]]) -> str:
    return hashlib.sha256(orjson.dumps([list(row) for row in rows])).hexdigest()[:16]


class Processor:
    """Runs the processing once on one connection."""

    def __init__(
        self,
        db: ProcessingDb,
        settings: ProcessingSettings,
        clock: Clock,
        connect: Callable[[], ProcessingDb],
    ) -> None:
        self._db = db
        self._settings = settings
        self._clock = clock
        self._connect = connect  # a second connection, for the flashcard replay's thread

    def _replay_cards(self, params: dict[str, Any], full: bool) -> list[flashcards.CardRow]:
        db = self._connect()
        try:
            return flashcards.replay_cards(db, self._settings, params, full=full)
        finally:
            db.close()

    def _last_run(self) -> LastRun | None:
        rows = self._db.query(
            "SELECT run_id, to_event_id, settings, reference FROM an_runs "
            "WHERE finished_ms IS NOT NULL ORDER BY run_id DESC LIMIT 1"
        )
        if not rows:
            return None
        run_id, to_event_id, settings, reference = rows[0]
        return LastRun(int(run_id), int(to_event_id), _json(settings), _json(reference))

    def _reference(self, todays: list[Today]) -> dict[str, Any]:
        """Digests of the reference data the results depend on, and today per zone."""
        db = self._db
        zones = db.query(
            "SELECT school_id, time_zone FROM ec_schools "
            "WHERE time_zone IS NOT NULL AND time_zone NOT IN ('', 'UTC') ORDER BY school_id"
        )
        books = db.query(
            "SELECT book_id, page_count FROM ec_books WHERE page_count IS NOT NULL ORDER BY book_id"
        )
        steps = db.query("SELECT lp_id, step_id FROM ec_lp_steps ORDER BY lp_id, step_id")
        return {
            "time_zones": _digest(zones),
            "books": _digest(books),
            "lp_steps": _digest(steps),
            "today": {t.time_zone: t.today_no for t in todays},
        }

    def _todays(self, now_ms: int) -> list[Today]:
        s = self._settings
        names = {
            row[0]
            for row in self._db.query(
                "SELECT DISTINCT time_zone FROM ec_schools "
                "WHERE time_zone IS NOT NULL AND time_zone <> ''"
            )
        }
        return [
            today_in(
                name,
                now_ms,
                school_weekdays=s.school_weekdays,
                school_days=s.help_no_reading_school_days,
                lookback_days=s.help_lookback_days,
            )
            for name in sorted(names | {"UTC"})
        ]

    def _params(self) -> dict[str, Any]:
        s = self._settings
        return {
            "session_gap_ms": s.session_gap_secs * 1000,
            "page_min_ms": s.page_min_secs * 1000,
            "page_max_ms": s.page_max_secs * 1000,
            "completed_ppm": round(s.book_completed_share * 1_000_000),
            "pass_grade": s.flashcard_pass_grade,
            "mastered_ms": s.flashcard_mastered_days * DAY_MS,
            "lp_pass_score": s.lp_pass_score,
            "help_max_failed_attempts": s.help_max_failed_attempts,
            "help_no_reading_school_days": s.help_no_reading_school_days,
            "help_min_retention": s.help_min_retention,
            "help_min_retention_reviews": s.help_min_retention_reviews,
        }

    def run(self) -> str:
        """Process what changed since the last run; return a one-line summary."""
        db = self._db
        started = time.perf_counter()
        now_ms = self._clock.now_ms()
        settings = self._settings.model_dump(mode="json", exclude=RESULT_SETTINGS_EXCLUDE)
        last = self._last_run()
        to_id = db.settled_max_id(self._settings.writers_wait_secs)
        todays = self._todays(now_ms)
        reference = self._reference(todays)
        full, reason = True, "first run"
        from_id = 0
        if last is not None:
            if last.settings != settings:
                reason = "settings changed"
            elif last.reference.get("time_zones") != reference["time_zones"]:
                reason = "school time zones changed"
            elif to_id < last.to_event_id:
                reason = "fewer events than the last run's watermark"
            else:
                full, reason, from_id = False, "new events", last.to_event_id
                if to_id == from_id:
                    if reference == last.reference:
                        return f"nothing new since event {to_id}; nothing written"
                    reason = "reference data or day changed"
        every_book = full or last is None or last.reference.get("books") != reference["books"]
        every_path = full or last is None or last.reference.get("lp_steps") != reference["lp_steps"]
        params: dict[str, Any] = {**self._params(), "from_id": from_id, "to_id": to_id}

        # The span of app times to cover: raw_events' primary key begins with the app time.
        span = db.query(
            "SELECT MIN(app_time_ms), MAX(app_time_ms) FROM raw_events"
            if full
            else "SELECT MIN(app_time_ms), MAX(app_time_ms) FROM reader_events "
            "WHERE id > :from_id AND id <= :to_id",
            params,
        )[0]
        start_ms = now_ms if span[0] is None else min(int(span[0]), now_ms)
        end_ms = now_ms if span[1] is None else max(int(span[1]), now_ms)
        steps: list[tuple[str, float]] = []  # seconds per step, for the debug log
        mark = time.perf_counter()

        def step(name: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            steps.append((name, now - mark))
            mark = now

        # The flashcard replay (Python) runs beside the SQL (which releases the GIL).
        with ThreadPoolExecutor(1, thread_name_prefix="hopper-processing-cards") as pool:
            replayed = pool.submit(self._replay_cards, dict(params), full)
            fill_time_tables(db, reference_zones(todays), start_ms, end_ms, todays)
            step("calendar")
            reading.select_scope(db, params, full=full)
            step("scope")
            reading.compute_reading(db, params, full=full)
            step("compute reading")
            daily.compute_days(db)
            step("compute days")
            learning_paths.compute_learning_paths(db, params)
            step("compute paths")
            card_rows = replayed.result()
            step("wait for the card replay")
        flashcards.store_cards(db, card_rows)
        step("store cards")
        cards = len(card_rows)
        days = int(db.query("SELECT count(*) FROM tmp_scope_days")[0][0])
        computed = time.perf_counter()

        with db.write_transaction():
            current = self._last_run()
            if (current.run_id if current else None) != (last.run_id if last else None):
                logger.info("Another processing run finished first; this one is dropped.")
                return "another run finished first; nothing written by this one"
            run_id = db.query(
                "INSERT INTO an_runs (started_ms, finished_ms, mode, reason, from_event_id, "
                "to_event_id, new_events, student_days, as_of_ms, settings, reference) "
                "VALUES (:started_ms, NULL, :mode, :reason, :from_id, :to_id, :new_events, "
                ":student_days, :as_of_ms, :settings, :reference) RETURNING run_id",
                {
                    **params,
                    "started_ms": now_ms,
                    "mode": "full" if full else "incremental",
                    "reason": reason,
                    "new_events": to_id - from_id,
                    "student_days": days,
                    "as_of_ms": now_ms,
                    "settings": orjson.dumps(settings).decode(),
                    "reference": orjson.dumps(reference).decode(),
                },
            )[0][0]
            params["run_id"] = int(run_id)
            if full:
                for table in ("an_sessions", "an_page_days", "an_student_days", "an_lp_step_days"):
                    db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
            reading.apply_reading(db, params)
            step("reading")
            daily.apply_days(db, params)
            step("days")
            learning_paths.apply_learning_paths(db, params, every_path=every_path)
            step("paths")
            flashcards.apply_cards(db, params, full=full)
            step("cards")
            reading.roll_up_books(db, params, every_book=every_book)
            step("books")
            daily.roll_up_students(db, params)
            step("students")
            flashcards.roll_up_decks(db, params)
            step("decks")
            flags = needs_help.flag_students(db, params)
            step("needs help")
            db.execute(
                "UPDATE an_runs SET finished_ms = :finished_ms WHERE run_id = :run_id",
                {"finished_ms": self._clock.now_ms(), "run_id": params["run_id"]},
            )
        done = time.perf_counter()
        step("commit")
        mode = "full" if full else "incremental"
        logger.debug(
            "Processing run %d steps, s: %s",
            params["run_id"],
            ", ".join(f"{name} {secs:.2f}" for name, secs in steps),
        )
        logger.info(
            "Processing run %d (%s, %s): events %d-%d, %d student-days, %d cards, "
            "%d flags; %.2f s computing, %.2f s writing.",
            params["run_id"],
            mode,
            reason,
            from_id,
            to_id,
            days,
            cards,
            flags,
            computed - started,
            done - computed,
        )
        return (
            f"run {params['run_id']} ({mode}: {reason}): events {from_id + 1}-{to_id}, "
            f"{days} student-days and {cards} cards recomputed, {flags} needs-help flags, "
            f"{done - started:.2f} s"
        )


def reference_zones(todays: list[Today]) -> list[str]:
    """Return the zone names the run knows of (those of ec_schools, and UTC)."""
    return [t.time_zone for t in todays]


def run_processing(settings: HopperSettings, clock: Clock) -> str:
    """The ``process`` job: migrate the store, then process what changed since the last run."""
    store = open_event_store(settings.store)
    try:
        store.migrate()
    finally:
        store.close()
    db = ProcessingDb.open(settings.store)
    try:
        return Processor(
            db, settings.processing, clock, lambda: ProcessingDb.open(settings.store)
        ).run()
    finally:
        db.close()
