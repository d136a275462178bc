"""Incremental processing on the real PostgreSQL: the same fixture cases as on SQLite.

Each case must give the tables written by hand, exactly what SQLite gives (every column;
floating-point values to 1e-9), the same result in incremental runs as in one run over
everything, and nothing new when run again.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from support.processing_cases import (
    CASES,
    commit_events,
    load_case,
    mismatches,
    pending_write,
    prepare_store,
    random_case,
    read_table,
    run_case,
    same_snapshots,
    settings_for,
    snapshot,
)

from hopper.config import StoreSettings, load_settings
from hopper.edge.processing import run_processing
from hopper.errors import BackendUnavailable
from hopper.store.postgres import PostgresEventStore
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


class _OpenWrite:
    """A writer whose transaction draws its ids, then stays open until released.

    What a second writer (another worker) looks like to processing: its rows have lower
    ids than rows committed after them, but are not visible yet.
    """

    def __init__(self, url: str, objs: list[dict], now_ms: int) -> None:
        self._store = PostgresEventStore(url)
        self._write = pending_write(objs, now_ms)
        self.drawn = threading.Event()
        self.release = threading.Event()
        self._thread = threading.Thread(target=self._hold)
        self._thread.start()
        assert self.drawn.wait(10)

    def _hold(self) -> None:
        conn = self._store._connection()
        try:
            with conn.transaction(), conn.cursor() as cur:
                self._store._write(cur, [self._write])
                self.drawn.set()
                self.release.wait(60)
        finally:
            self._store.close()

    def commit(self) -> None:
        self.release.set()
        self._thread.join(30)
        assert not self._thread.is_alive()


def _one_run(case, tmp_path: Path) -> dict:
    once = StoreSettings(backend="sqlite", sqlite_path=tmp_path / "once.db")
    run_case(case, once, at_once=True)
    return snapshot(once)


def test_a_write_still_open_when_a_run_starts_is_waited_for_not_skipped(
    postgres_url: str, tmp_path: Path
) -> None:
    case = load_case("late_events")
    store = _postgres(postgres_url)
    prepare_store(case, store)
    now_ms = case.arrivals[-1]
    objs = [obj for _, obj in case.events]
    held = _OpenWrite(postgres_url, objs[::2], now_ms)  # draws the lower ids, stays open
    try:
        assert commit_events(store, objs[1::2], now_ms) > 0  # higher ids, committed first
        summaries: list[str] = []
        run = threading.Thread(
            target=lambda: summaries.append(
                run_processing(settings_for(case, store), FrozenClock(now_ms))
            )
        )
        run.start()
        run.join(1.0)
        assert run.is_alive(), "the run read its watermark past a write still open"
    finally:
        held.commit()
    run.join(60)
    assert summaries and "first run" in summaries[0], summaries
    assert same_snapshots(snapshot(store), _one_run(case, tmp_path)) == []
    # The watermark covers every row, so the next run has nothing to do.
    again = run_processing(settings_for(case, store), FrozenClock(now_ms))
    assert again.startswith("nothing new"), again


def test_a_write_open_past_the_wait_fails_the_run_and_the_next_run_takes_it(
    postgres_url: str, tmp_path: Path
) -> None:
    case = load_case("late_events")
    store = _postgres(postgres_url)
    prepare_store(case, store)
    now_ms = case.arrivals[-1]
    objs = [obj for _, obj in case.events]
    settings = load_settings(
        store=store.model_dump(), processing={**case.settings, "writers_wait_secs": 0.5}
    )
    held = _OpenWrite(postgres_url, objs[::2], now_ms)
    try:
        commit_events(store, objs[1::2], now_ms)
        with pytest.raises(BackendUnavailable, match="stayed open for over 0.5 s"):
            run_processing(settings, FrozenClock(now_ms))
        assert read_table(store, "an_runs") == []  # nothing recorded by the failed run
    finally:
        held.commit()
    assert "first run" in run_processing(settings, FrozenClock(now_ms))
    assert same_snapshots(snapshot(store), _one_run(case, tmp_path)) == []
