"""Incremental processing on the embedded SQLite store: the fixture cases and the run rules.

The cases (tests/fixtures/processing/*) hold events and the tables expected by hand; the
same cases run on PostgreSQL in tests/integration/edge/test_processing.py.
"""

from __future__ import annotations

import logging
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.processing_cases import (
    CASES,
    commit_events,
    insert_reference,
    load_case,
    mismatches,
    random_case,
    read_table,
    run_case,
    same_snapshots,
    settings_for,
    snapshot,
)
from typer.testing import CliRunner

from hopper.cli import app
from hopper.config import ProcessingSettings, StoreSettings
from hopper.edge.jobs import EDGE_JOBS
from hopper.edge.processing import run_processing
from hopper.edge.processing.flashcards import CardReplayer
from hopper.edge.processing.timezones import offset_periods, zone
from hopper.store import open_event_store
from hopper.testing import FrozenClock

DAY_MS = 86_400_000


def _store(tmp_path: Path, name: str = "events.db") -> StoreSettings:
    return StoreSettings(backend="sqlite", sqlite_path=tmp_path / name)


@pytest.mark.parametrize("name", CASES)
def test_case_gives_the_tables_written_by_hand(tmp_path: Path, name: str) -> None:
    case = load_case(name)
    store = _store(tmp_path)
    run_case(case, store)
    assert case.expected, f"case {name} expects nothing"
    assert mismatches(store, case) == []


@pytest.mark.parametrize("name", CASES)
def test_incremental_runs_equal_one_run_over_everything(tmp_path: Path, name: str) -> None:
    case = load_case(name)
    incremental, at_once = _store(tmp_path, "incremental.db"), _store(tmp_path, "once.db")
    run_case(case, incremental)
    run_case(case, at_once, at_once=True)
    assert same_snapshots(snapshot(incremental), snapshot(at_once)) == []


@pytest.mark.parametrize("seed", range(6))
def test_random_late_arrivals_equal_one_run_over_everything(tmp_path: Path, seed: int) -> None:
    case = random_case(seed)
    incremental, at_once = _store(tmp_path, "incremental.db"), _store(tmp_path, "once.db")
    outcome = run_case(case, incremental)
    assert all("incremental" in s for s in outcome.summaries[1:]), outcome.summaries
    run_case(case, at_once, at_once=True)
    books = read_table(incremental, "an_student_books")
    assert any(row["completion"] for row in books), "no book read at all"
    assert same_snapshots(snapshot(incremental), snapshot(at_once)) == []


@pytest.mark.parametrize("name", CASES)
def test_running_again_changes_nothing(tmp_path: Path, name: str) -> None:
    case = load_case(name)
    store = _store(tmp_path)
    run_case(case, store)
    before = snapshot(store, with_run_id=True)
    runs = read_table(store, "an_runs")
    summary = run_processing(settings_for(case, store), FrozenClock(case.arrivals[-1]))
    assert summary.startswith("nothing new")
    assert snapshot(store, with_run_id=True) == before
    assert read_table(store, "an_runs") == runs


def test_a_late_event_recomputes_only_the_days_it_touches(tmp_path: Path) -> None:
    case = load_case("late_events")
    store = _store(tmp_path)
    outcome = run_case(case, store)
    # Arrival 2 holds three events; the redelivered copy is not stored again.
    assert outcome.stored == [5, 2]
    days = {row["day"]: row["run_id"] for row in read_table(store, "an_student_days")}
    assert days == {"2026-03-02": 2, "2026-03-04": 1, "2026-03-05": 2}


def test_a_new_day_without_events_moves_streaks_and_flags(tmp_path: Path) -> None:
    case = load_case("late_events")
    store = _store(tmp_path)
    run_case(case, store)
    two_days_later = case.arrivals[-1] + 2 * DAY_MS
    summary = run_processing(settings_for(case, store), FrozenClock(two_days_later))
    assert "reference data or day changed" in summary
    (student,) = read_table(store, "an_students")
    assert (student["current_streak"], student["longest_streak"]) == (0, 2)
    assert student["as_of_day"] == "2026-03-07"
    last = read_table(store, "an_runs")[-1]
    assert (last["mode"], last["new_events"], last["student_days"]) == ("incremental", 0, 0)


def test_other_settings_recompute_everything_and_are_stored(tmp_path: Path) -> None:
    case = load_case("sessions")
    store = _store(tmp_path)
    run_case(case, store)
    case.settings = {"session_gap_secs": 600}
    summary = run_processing(settings_for(case, store), FrozenClock(case.arrivals[-1]))
    assert "full: settings changed" in summary
    ana = [row for row in read_table(store, "an_sessions") if row["username"] == "ana"]
    # 09:00:40 -> 09:10:00 is 560 s: one session now, ended by the new app session.
    assert [row["end_reason"] for row in ana] == [
        "app_session_ended",
        "app_session_started",
        "last_of_day",
    ]
    last = read_table(store, "an_runs")[-1]
    settings = last["settings"]
    assert '"session_gap_secs":600' in settings and '"page_max_secs":120' in settings
    assert {row["run_id"] for row in read_table(store, "an_student_days")} == {last["run_id"]}


def test_processing_works_without_reference_data(tmp_path: Path) -> None:
    case = load_case("timezones")
    case.reference = {}
    store = _store(tmp_path)
    run_case(case, store)
    # Every school is unknown: days are UTC days, books have no page count.
    cai = [row["day"] for row in read_table(store, "an_student_days") if row["username"] == "cai"]
    assert cai == ["2026-03-08", "2026-03-09", "2026-03-10"]
    books = read_table(store, "an_student_books")
    assert books and all(row["completion"] is None for row in books)
    assert {row["time_zone"] for row in read_table(store, "an_students")} == {"UTC"}


def test_page_counts_imported_later_complete_the_books_without_a_full_run(
    tmp_path: Path,
) -> None:
    case = load_case("sessions")
    books = case.reference.pop("ec_books")
    store = _store(tmp_path)
    run_case(case, store)
    assert all(row["completion"] is None for row in read_table(store, "an_student_books"))
    insert_reference(store, {"ec_books": books})
    summary = run_processing(settings_for(case, store), FrozenClock(case.arrivals[-1]))
    assert "incremental" in summary
    assert mismatches(store, case) == []


def test_a_school_time_zone_change_recomputes_everything(tmp_path: Path) -> None:
    case = load_case("timezones")
    store = _store(tmp_path)
    run_case(case, store)
    insert_reference(
        store, {"ec_schools": [{"school_id": "sch-nowhere", "time_zone": "Asia/Tokyo"}]}
    )
    summary = run_processing(settings_for(case, store), FrozenClock(case.arrivals[-1]))
    assert "full: school time zones changed" in summary
    dan = [row["day"] for row in read_table(store, "an_student_days") if row["username"] == "dan"]
    assert dan == ["2026-03-09"]  # 23:59 and 00:01 UTC are 08:59 and 09:01 in Tokyo


def test_a_run_logs_no_usernames(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    case = load_case("streaks")
    caplog.set_level(logging.DEBUG, logger="hopper")
    run_case(case, _store(tmp_path))
    assert any("Processing run" in r.getMessage() for r in caplog.records)
    users = {obj["username"] for _, obj in case.events}
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert not [user for user in users if user in logged]


def test_the_job_is_registered_and_runs_from_the_cli(tmp_path: Path) -> None:
    store = _store(tmp_path)
    case = load_case("sessions")
    migrating = open_event_store(store)
    migrating.migrate()
    migrating.close()
    commit_events(store, [obj for _, obj in case.events], case.arrivals[0])
    config = tmp_path / "hopper.toml"
    config.write_text(
        f'[store]\nbackend = "sqlite"\nsqlite_path = "{store.sqlite_path}"\n'
        "[processing]\ninterval_secs = 60\n"
    )
    result = CliRunner().invoke(app, ["job", "process", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "run 1 (full: first run)" in result.output
    assert len(read_table(store, "an_sessions")) == 5
    assert EDGE_JOBS["process"].interval_secs(settings_for(case, store)) == 900


def test_offset_periods_find_the_daylight_saving_change_to_the_millisecond() -> None:
    start = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
    end = int(datetime(2026, 3, 15, tzinfo=UTC).timestamp() * 1000)
    periods = offset_periods(zone("America/New_York"), start, end)
    change = int(datetime(2026, 3, 8, 7, tzinfo=UTC).timestamp() * 1000)
    assert [(p[1], p[2]) for p in periods[:-1]] == [(change, -5 * 3_600_000)]
    assert periods[-1][0] == change and periods[-1][2] == -4 * 3_600_000


def test_continuing_a_card_equals_replaying_it_from_the_start() -> None:
    replayer = CardReplayer(ProcessingSettings())
    rng = random.Random(8)
    at = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
    reviews: list[tuple[int, int, int]] = []
    for event_id in range(1, 60):
        at += rng.choice([60_000, 600_000, DAY_MS, 3 * DAY_MS, 9 * DAY_MS])
        reviews.append((event_id, at, rng.randrange(6)))
    key = ("u", "d", "c")
    whole = replayer.replay(key, None, reviews)
    row: Any = None
    for start in range(0, len(reviews), 7):
        row = replayer.replay(key, row, reviews[start : start + 7])
    assert row == whole
    assert whole.reviews == len(reviews) and whole.lapses > 0
