"""Incremental processing on the real PostgreSQL: the same fixture cases as on SQLite.

Each case must give the tables written by hand, exactly what SQLite gives (every column;
floating-point values to 1e-9), the same result in incremental runs as in one run over
everything, and nothing new when run again.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.processing_cases import (
    CASES,
    load_case,
    mismatches,
    random_case,
    read_table,
    run_case,
    same_snapshots,
    settings_for,
    snapshot,
)

from hopper.config import StoreSettings
from hopper.edge.processing import run_processing
from hopper.testing import FrozenClock

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _postgres(url: str) -> StoreSettings:
    return StoreSettings(backend="postgres", postgres_url=url)


@pytest.mark.parametrize("name", CASES)
def test_case_on_postgres_gives_the_tables_written_by_hand(postgres_url: str, name: str) -> None:
    case = load_case(name)
    store = _postgres(postgres_url)
    run_case(case, store)
    assert mismatches(store, case) == []


@pytest.mark.parametrize("name", CASES)
def test_postgres_and_sqlite_give_identical_tables(
    postgres_url: str, tmp_path: Path, name: str
) -> None:
    case = load_case(name)
    postgres = _postgres(postgres_url)
    sqlite = StoreSettings(backend="sqlite", sqlite_path=tmp_path / "events.db")
    run_case(case, postgres)
    run_case(case, sqlite)
    assert same_snapshots(snapshot(postgres), snapshot(sqlite)) == []
    # The runs too: same watermarks, counts and stored settings.
    columns = ["run_id", "mode", "reason", "from_event_id", "to_event_id", "new_events"]
    assert read_table(postgres, "an_runs", columns) == read_table(sqlite, "an_runs", columns)


@pytest.mark.parametrize("name", ["late_events", "flashcards"])
def test_incremental_runs_on_postgres_equal_one_run(
    postgres_url: str, tmp_path: Path, name: str
) -> None:
    case = load_case(name)
    postgres = _postgres(postgres_url)
    once = StoreSettings(backend="sqlite", sqlite_path=tmp_path / "once.db")
    run_case(case, postgres)
    run_case(case, once, at_once=True)
    assert same_snapshots(snapshot(postgres), snapshot(once)) == []


@pytest.mark.parametrize("seed", range(3))
def test_random_late_arrivals_on_postgres_equal_one_run(
    postgres_url: str, tmp_path: Path, seed: int
) -> None:
    case = random_case(seed)
    postgres = _postgres(postgres_url)
    once = StoreSettings(backend="sqlite", sqlite_path=tmp_path / "once.db")
    run_case(case, postgres)
    run_case(case, once, at_once=True)
    assert same_snapshots(snapshot(postgres), snapshot(once)) == []


def test_running_again_on_postgres_changes_nothing(postgres_url: str) -> None:
    case = load_case("late_events")
    store = _postgres(postgres_url)
    run_case(case, store)
    before = snapshot(store, with_run_id=True)
    summary = run_processing(settings_for(case, store), FrozenClock(case.arrivals[-1]))
    assert summary.startswith("nothing new")
    assert snapshot(store, with_run_id=True) == before
    assert len(read_table(store, "an_runs")) == 2
