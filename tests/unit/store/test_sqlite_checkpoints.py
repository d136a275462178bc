"""The SQLite store checkpoints its WAL in the background, never inside a commit."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

from hopper.events import decode_batch
from hopper.store.base import PendingWrite
from hopper.store.sqlite import SqliteEventStore
from hopper.testing import NOW_MS, make_batch


def test_committed_pages_reach_the_database_file_without_a_commit_checkpointing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"
    store = SqliteEventStore(path)
    store.migrate()
    assert store._checkpointer is None  # opening (or migrating) starts no thread
    size_before = path.stat().st_size
    events, _ = decode_batch(make_batch(2_000))
    store.commit([PendingWrite("test", NOW_MS, events)])
    assert store._checkpointer is not None
    thread = store._checkpointer._thread
    assert thread.is_alive() and thread.name == "hopper-sqlite-checkpoint"
    # The writer's own automatic checkpoint is pushed back to the WAL's bound...
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    autocheckpoint = store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    assert autocheckpoint == 16384
    # ...and the background thread copies the WAL into the database file meanwhile.
    deadline = time.monotonic() + 10
    while path.stat().st_size == size_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.stat().st_size > size_before
    store.close()
    assert not thread.is_alive()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM reader_events").fetchone() == (2_000,)
