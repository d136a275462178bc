from __future__ import annotations

import time
from pathlib import Path

from hopper.config import HopperSettings, load_settings
from hopper.events import Rejection, RejectReason
from hopper.jobs import JOBS
from hopper.jobs.registry import retain_topics
from hopper.pipeline.topics import open_topic_log
from hopper.store import PendingWrite, open_event_store
from hopper.testing import NOW_MS, FrozenClock

DAY = 86_400_000


def test_purge_errors_deletes_only_rows_older_than_the_retention(settings: HopperSettings) -> None:
    store = open_event_store(settings.store)
    store.migrate()
    bad = Rejection(-1, RejectReason.UNDECODABLE, "garbage", b"\xff")
    store.commit(
        [
            PendingWrite("http", NOW_MS - 31 * DAY, [], [bad]),
            PendingWrite("http", NOW_MS - 29 * DAY, [], [bad]),
            PendingWrite("mqtt", NOW_MS, [], [bad]),
        ]
    )
    store.close()
    summary = JOBS["purge-errors"].run(settings, FrozenClock(NOW_MS))
    assert summary.startswith("deleted 1 rows")
    store = open_event_store(settings.store)
    assert [e.received_ms for e in store.errors()] == [NOW_MS, NOW_MS - 29 * DAY]
    store.close()


def test_purge_runs_on_the_configured_interval(settings: HopperSettings) -> None:
    assert JOBS["purge-errors"].interval_secs(settings) == settings.retention.purge_interval_secs


def test_retain_topics_removes_old_records_of_the_topics_in_use(tmp_path: Path) -> None:
    settings = load_settings(
        store={"sqlite_path": tmp_path / "e.db"},
        topics={"sqlite_path": tmp_path / "t.db", "external": ["edge-events"]},
        pipeline={"edge": {"sinks": ["store", "topic:edge-events"]}},
    )
    log = open_topic_log(settings.topics)
    try:
        log.ensure_topic("edge-events", 1)
        log.append("edge-events", [(b"k", b"v")])
    finally:
        log.close()
    day = 86_400_000
    summary = retain_topics(settings, FrozenClock(NOW_MS))
    assert summary.startswith("removed 0 records")  # the record is younger than 7 days
    late = FrozenClock(time.time_ns() // 1_000_000 + 8 * day)
    assert retain_topics(settings, late).startswith("removed 1 records")
