from __future__ import annotations

from hopper.config import HopperSettings
from hopper.events import Rejection, RejectReason
from hopper.jobs import JOBS
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
