"""One DedupIndex contract, on memory, SQLite and the real PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from hopper.config import load_settings
from hopper.store import open_event_store
from hopper.store.base import DedupIndex
from hopper.store.dedup import MemoryDedupIndex, SqlDedupIndex

pytestmark = pytest.mark.integration


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DedupIndex]:
    if request.param == "memory":
        found: DedupIndex = MemoryDedupIndex()
    else:
        if request.param == "sqlite":
            store = load_settings(store={"sqlite_path": tmp_path / "e.db"}).store
        else:
            url = request.getfixturevalue("postgres_url")
            store = load_settings(store={"backend": "postgres", "postgres_url": url}).store
        events = open_event_store(store)
        events.migrate()  # the table comes with the store's schema
        events.close()
        found = SqlDedupIndex(store)
    yield found
    found.close()


def test_a_key_is_new_once(index: DedupIndex) -> None:
    assert index.claim("msgid", [b"a", b"b"], 1000) == [True, True]
    assert index.claim("msgid", [b"b", b"c"], 2000) == [False, True]


def test_repeats_within_one_claim_are_not_new(index: DedupIndex) -> None:
    assert index.claim("mid", [b"x", b"x", b"y", b"x"], 1000) == [True, False, True, False]


def test_namespaces_are_apart(index: DedupIndex) -> None:
    assert index.claim("msgid", [b"k"], 1000) == [True]
    assert index.claim("mid", [b"k"], 1000) == [True]


def test_purge_forgets_old_keys_only(index: DedupIndex) -> None:
    index.claim("mid", [b"old"], 1000)
    index.claim("mid", [b"new"], 5000)
    assert index.purge(older_than_ms=3000) == 1
    assert index.claim("mid", [b"old", b"new"], 6000) == [True, False]


def test_an_empty_claim_is_a_no_op(index: DedupIndex) -> None:
    assert index.claim("mid", [], 1000) == []


def test_two_claimants_of_a_key_one_wins(index: DedupIndex, tmp_path: Path) -> None:
    results: list[bool] = []
    barrier = threading.Barrier(4)

    def claim() -> None:
        barrier.wait(5)
        results.extend(index.claim("mid", [b"contested"], 1000))

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == [False, False, False, True]
