"""The monitor's feed: a live sink of the edge topology, or a subscriber of Redis ``lp-events``.

``MonitorSink`` is registered as the live sink ``monitor`` (``hopper.pipeline.LIVE_SINKS``):
after each group commit the writer offers it the new events, which it only appends to a
bounded buffer (full: dropped and counted, never waited for). Its own thread folds them
into the board, emits held changes when due, recomputes states every second and reloads
the roster when the reference tables change. With ``monitor.source = "redis"`` the node's
own commits are ignored and a second thread follows the ``lp-events`` channel on
``pubsub.redis_url`` instead (ingest running in other processes publishes there).

At start-up the thread first fills the board from the events stored in the last
``monitor.warm_start_secs`` (newest first, at most ``monitor.warm_start_max_events`` rows),
so a restart does not blank the teachers' screens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from hopper.clock import Clock
from hopper.config import HopperSettings
from hopper.edge.monitor.board import MonitorBoard
from hopper.edge.monitor.presence import (
    CAM_STATUS,
    MAX_DEVICE_ID_CHARS,
    Sighting,
    sighting_from_event,
    sighting_from_json,
    sighting_from_row,
)
from hopper.edge.monitor.roster import load_roster, roster_signature
from hopper.errors import HopperError
from hopper.events.model import Event
from hopper.observe.metrics import HopperMetrics
from hopper.store.engine import engine_for
from hopper.store.schema import reader_events

if TYPE_CHECKING:
    from hopper.pipeline.topology import Resources

logger = logging.getLogger(__name__)

# The thread takes what the writer offered this often, rather than being woken by every
# commit: a thread wake-up costs ~100 us of CPU on a small VM, and 200 commits/s of single
# heartbeats would cost 2% of a core in wake-ups alone. It adds at most this to the delay.
FEED_SECS = 0.05
WARM_CHUNK_ROWS = 5000
REDIS_RETRY_MAX_SECS = 30.0

Item = tuple[list[Event], int] | list[Sighting]


class MonitorSink:
    """The live monitor's feed: offered each commit's new events; never blocks the writer."""

    def __init__(
        self, name: str, settings: HopperSettings, clock: Clock, metrics: HopperMetrics
    ) -> None:
        self.name = name
        self.settings = settings
        self.board = MonitorBoard(settings.monitor, clock, metrics)
        self.is_local = settings.monitor.source == "local"
        self.is_healthy = True  # the Redis subscription, when the feed is Redis
        self._clock = clock
        self._metrics = metrics.component(name)
        self._max = settings.monitor.buffer_max_events
        self._buffer: deque[Item] = deque()
        self._buffered = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"hopper-{name}", daemon=True)
        self._redis_thread: threading.Thread | None = None
        self._redis_loop: asyncio.AbstractEventLoop | None = None
        self._redis_task: asyncio.Task[None] | None = None
        self._engine: sa.Engine | None = None
        if not self.is_local:
            import hopper.pubsub.redis  # noqa: F401 - raises BackendMissing now, not in a thread

    # -- the LiveSink protocol --------------------------------------------------------

    def offer(self, batches: Sequence[tuple[list[Event], int]]) -> None:
        """Buffer a group commit's new events (dropped and counted when the buffer is full)."""
        if not self.is_local:
            return  # the feed is Redis: this node's own events arrive through it
        with self._cond:
            for events, received_ms in batches:
                if not events:
                    continue
                self._metrics.received.inc(len(events))
                if self._buffered + len(events) > self._max:
                    self._metrics.dropped("buffer_full", len(events))
                    continue
                self._buffer.append((events, received_ms))
                self._buffered += len(events)
            if self._buffered > self._max // 4:
                self._cond.notify()  # filling up: take it now rather than drop it later

    def start(self) -> None:
        """Start the monitor's thread (and the Redis follower when the feed is Redis)."""
        self._thread.start()
        if not self.is_local:
            self._redis_thread = threading.Thread(
                target=self._follow_redis, name=f"hopper-{self.name}-redis", daemon=True
            )
            self._redis_thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Apply what is buffered, end every subscription, then stop."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._redis_loop is not None and self._redis_task is not None:
            with contextlib.suppress(RuntimeError):  # its loop has already finished
                self._redis_loop.call_soon_threadsafe(self._redis_task.cancel)
        for thread in (self._redis_thread, self._thread):
            if thread is not None and thread.is_alive():
                thread.join(timeout)
        self.board.close_subscriptions()
        if self._engine is not None:
            self._engine.dispose()

    # -- the monitor's thread ---------------------------------------------------------

    def _run(self) -> None:
        self._refresh_roster()
        self._warm_start()
        next_roster = time.monotonic() + self.settings.monitor.roster_refresh_secs
        next_feed = time.monotonic()
        while True:
            with self._cond:
                wait = next_feed - time.monotonic()
                if wait > 0 and not self._stopping:
                    self._cond.wait(wait)
                items = list(self._buffer)
                self._buffer.clear()
                self._buffered = 0
                stopping = self._stopping
            next_feed = time.monotonic() + FEED_SECS
            try:
                if items:
                    self._apply(items)
                self.board.tick()
                now = time.monotonic()
                if now >= next_roster:
                    next_roster = now + self.settings.monitor.roster_refresh_secs
                    self._refresh_roster()
            except Exception:  # a bug must not silence the monitor for good
                logger.exception("The live monitor failed to apply events; they were skipped.")
                self._metrics.error("apply")
            if stopping and not items:
                return

    def _apply(self, items: list[Item]) -> None:
        """Fold buffered events into the board: per device, its newest status and other event."""
        latest: dict[tuple[str, bool], tuple[Event, int]] = {}
        sightings: list[Sighting] = []
        bad = 0
        for item in items:
            if isinstance(item, list):
                sightings += item
                continue
            events, received_ms = item
            for event in events:
                if len(event.device_id) > MAX_DEVICE_ID_CHARS:
                    bad += 1
                    continue
                # Only each device's newest heartbeat and newest other event can change
                # what its tile shows: the rest only prove presence, which the newest does too.
                key = (event.device_id, event.event_type == CAM_STATUS)
                kept = latest.get(key)
                if kept is None or event.app_time_ms >= kept[0].app_time_ms:
                    latest[key] = (event, received_ms)
        for event, received_ms in latest.values():
            sighting = sighting_from_event(event, received_ms)
            if sighting is None:
                bad += 1  # no device id (the validate stage was left out)
            else:
                sightings.append(sighting)
        sightings.sort(key=lambda s: s.app_time_ms)
        self.board.observe(sightings)
        offered = sum(len(i[0]) if isinstance(i, tuple) else len(i) for i in items)
        self._metrics.dropped("bad_device_id", bad)
        self._metrics.sent.inc(offered - bad)

    def _store(self) -> sa.Engine:
        if self._engine is None:
            self._engine = engine_for(self.settings.store)
        return self._engine

    def _refresh_roster(self) -> None:
        """Reload names and classes when the reference tables changed."""
        try:
            with self._store().connect() as conn:
                signature = roster_signature(conn)
                if signature == self.board.roster.signature:
                    return
                roster = load_roster(conn, signature)
        except sa.exc.SQLAlchemyError as exc:
            logger.warning("The live monitor could not read the class lists: %s.", exc)
            self._metrics.error(type(exc).__name__)
            return
        self.board.set_roster(roster)
        logger.info(
            "Live monitor roster: %d students in %d classes.",
            len(roster.students),
            len(roster.classes),
        )

    def _warm_start(self) -> None:
        """Fill the board from the recently stored events, newest first, quietly."""
        config = self.settings.monitor
        if not config.warm_start_secs or not config.warm_start_max_events:
            return
        since = self._clock.now_ms() - config.warm_start_secs * 1000
        e = reader_events
        columns = (
            e.c.device_id, e.c.username, e.c.event_type, e.c.app_time_ms, e.c.received_ms,
            e.c.app_version, e.c.payload,
        )  # fmt: skip
        latest: dict[tuple[str, bool], Any] = {}
        read = 0
        try:
            with self._store().connect() as conn:
                high = conn.execute(sa.select(sa.func.max(e.c.id))).scalar()
                # Ids grow with commits: walk back in chunks until the rows are older than
                # the window, so the scan stays a few index ranges even on a huge table.
                chunks = config.warm_start_max_events // WARM_CHUNK_ROWS + 10
                while (
                    high is not None and high > 0 and chunks and read < config.warm_start_max_events
                ):
                    chunks -= 1
                    low = high - WARM_CHUNK_ROWS
                    rows = conn.execute(
                        sa.select(*columns).where(e.c.id > low, e.c.id <= high)
                    ).all()
                    high = low
                    is_older = False
                    for row in rows:
                        if row.received_ms < since:
                            is_older = True
                            continue
                        read += 1
                        key = (row.device_id, row.event_type == CAM_STATUS)
                        kept = latest.get(key)
                        if kept is None or row.app_time_ms >= kept.app_time_ms:
                            latest[key] = row
                    if is_older:
                        break
        except sa.exc.SQLAlchemyError as exc:
            logger.warning("The live monitor could not read recent events: %s.", exc)
            self._metrics.error(type(exc).__name__)
            return
        sightings = [
            s for s in (sighting_from_row(*row) for row in latest.values()) if s is not None
        ]
        sightings.sort(key=lambda s: s.app_time_ms)
        self.board.observe(sightings, emit=False)
        self.board.tick()
        logger.info(
            "Live monitor warm start: %d devices from %d recent events.",
            len({s.device_id for s in sightings}),
            read,
        )

    # -- the Redis follower -----------------------------------------------------------

    def _offer_sightings(self, sightings: list[Sighting]) -> None:
        with self._cond:
            self._metrics.received.inc(len(sightings))
            if self._buffered + len(sightings) > self._max:
                self._metrics.dropped("buffer_full", len(sightings))
                return
            self._buffer.append(sightings)
            self._buffered += len(sightings)
            if self._buffered > self._max // 4:
                self._cond.notify()

    def _follow_redis(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            task = loop.create_task(self._follow())
            self._redis_loop, self._redis_task = loop, task
            if self._stopping:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(task)
        finally:
            loop.close()

    async def _follow(self) -> None:
        from hopper.pubsub.redis import RedisChannels

        pubsub = self.settings.pubsub
        channels = RedisChannels(pubsub.redis_url.get_secret_value())
        delay = 1.0
        try:
            while not self._stopping:
                try:
                    subscription = await channels.subscribe(pubsub.lp_events_channel)
                    self.is_healthy, delay = True, 1.0
                    try:
                        async for message in subscription:
                            sighting = sighting_from_json(message)
                            if sighting is None:
                                self._metrics.received.inc()
                                self._metrics.dropped("undecodable")
                                continue
                            self._offer_sightings([sighting])
                    finally:
                        await subscription.aclose()
                except HopperError as exc:
                    self.is_healthy = False
                    self._metrics.error(type(exc).__name__)
                    logger.warning(
                        "The live monitor lost channel %s, retrying in %.0f s: %s.",
                        pubsub.lp_events_channel,
                        delay,
                        exc,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, REDIS_RETRY_MAX_SECS)
        finally:
            channels.close()


def build_monitor_sink(name: str, resources: Resources) -> MonitorSink:
    """Build the live monitor's sink over a process's resources (a ``LIVE_SINKS`` factory)."""
    return MonitorSink(name, resources.settings, resources.clock, resources.metrics)
