"""The board: every device's presence, per class, and the changes its subscribers get.

One lock guards it all. The feed (the monitor's thread) calls ``observe`` and ``tick``;
readers (API handlers, pages, SSE streams in the event loop) take snapshots and
subscriptions. Nothing a reader does can block the feed for longer than one dictionary
update, and a reader that does not read only makes its own queue coalesce:

- a change is emitted at most once per device per ``device_update_interval_ms``; what
  comes in between is merged and emitted when the interval is over (``tick``);
- each emitted change gets the next number of one increasing sequence, its *cursor*
  (started from the clock, so cursors of an earlier run are older than this run's), and
  is kept in a bounded log so that a client can resume after a cursor;
- a subscription's queue holds at most one entry per device (the latest, merged); when it
  would hold more than ``client_queue_max_devices``, it is emptied and the subscriber gets
  fresh snapshots instead (``monitor_resets_total{reason="queue_full"}``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hopper.clock import Clock
from hopper.config import MonitorSettings
from hopper.edge.monitor.presence import (
    DevicePresence,
    DeviceState,
    DeviceTile,
    PresenceRules,
    Sighting,
)
from hopper.edge.monitor.roster import Roster, StudentRef
from hopper.errors import HopperError
from hopper.observe.metrics import HopperMetrics

logger = logging.getLogger(__name__)

# States are recomputed from the passing time every second, or every half heartbeat
# interval when that is shorter (so no state is skipped).
MAX_SWEEP_MS = 1000
MAX_SUBSCRIBED_CLASSES = 50  # classes one subscription may follow
# A subscriber that has not taken what waits for it for this long is closed: its reader is
# gone or stuck on a client that stopped reading (its queue stays bounded meanwhile).
MIN_SUBSCRIBER_IDLE_SECS = 60.0
POLLERS_WINDOW_MS = 30_000
POLLERS_PER_STEP = 10  # the suggested poll interval grows one step per this many pollers
MAX_POLL_STEPS = 10
MAX_POLLERS_TRACKED = 10_000


class MonitorBusyError(HopperError):
    """The monitor has as many subscribers as it may have, or is stopping; retry later."""

    def __init__(self, message: str, *, retry_after_secs: int = 5) -> None:
        super().__init__(message)
        self.retry_after_secs = retry_after_secs


@dataclass(frozen=True, slots=True)
class DeviceChange:
    """What changed on one device: its changed fields, or ``{"removed": True}``."""

    device_id: str
    fields: dict[str, Any]
    seq: int  # the cursor of the change (merged changes: the latest)
    received_ms: int | None  # receipt of the oldest event behind it; None: time passed

    @property
    def is_removal(self) -> bool:
        """Tell whether the device left the subscriber's classes (or was forgotten)."""
        return self.fields.get("removed") is True

    def as_dict(self) -> dict[str, Any]:
        """Return the change as JSON-ready fields, ``device_id`` first."""
        return {"device_id": self.device_id, **self.fields}


@dataclass(frozen=True, slots=True)
class ClassSnapshot:
    """A class's devices at one cursor, and the students of the class not seen on any."""

    class_id: str
    class_name: str | None
    cursor: int
    now_ms: int
    heartbeat_interval_ms: int
    tiles: list[DeviceTile]
    not_seen: list[StudentRef]

    @property
    def counts(self) -> dict[str, int]:
        """Return how many devices are in each state."""
        counts = dict.fromkeys((s.value for s in DeviceState), 0)
        for tile in self.tiles:
            counts[tile.state.value] += 1
        return counts

    def as_dict(self) -> dict[str, Any]:
        """Return the snapshot as JSON-ready fields."""
        return {
            "class_id": self.class_id,
            "class_name": self.class_name,
            "cursor": str(self.cursor),
            "now_ms": self.now_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "counts": self.counts,
            "devices": [tile.as_dict() for tile in self.tiles],
            "students_not_seen": [student.as_dict() for student in self.not_seen],
        }


@dataclass(frozen=True, slots=True)
class ClassChanges:
    """The changes of a class after a cursor; or, when that cursor is too old, a snapshot."""

    class_id: str
    cursor: int
    changes: list[DeviceChange]
    snapshot: ClassSnapshot | None  # set when the client must start again from it

    def as_dict(self) -> dict[str, Any]:
        """Return the answer as JSON-ready fields (a reset carries the snapshot's fields)."""
        if self.snapshot is not None:
            return {**self.snapshot.as_dict(), "reset": True}
        return {
            "class_id": self.class_id,
            "cursor": str(self.cursor),
            "reset": False,
            "devices": [change.as_dict() for change in self.changes],
        }


Message = ClassSnapshot | DeviceChange


class Subscription:
    """One subscriber's bounded, coalescing queue of changes for some classes.

    Create it with ``MonitorBoard.subscribe`` inside the event loop that reads it; read it
    with ``await next(timeout)`` or ``async for messages in subscription``; ``close`` it.
    """

    def __init__(
        self,
        board: MonitorBoard,
        class_ids: frozenset[str],
        loop: asyncio.AbstractEventLoop,
        max_pending: int,
    ) -> None:
        self.board = board
        self.class_ids = class_ids
        self._loop = loop
        self._event = asyncio.Event()
        self._max_pending = max_pending
        self._pending: dict[str, DeviceChange] = {}
        self._initial: list[Message] | None = None
        self._woken = False
        self._woken_at = 0.0
        self.is_reset = False
        self.is_closed = False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> list[Message]:
        messages = await self.next()
        if messages is None:
            raise StopAsyncIteration
        return messages

    async def next(self, timeout: float | None = None) -> list[Message] | None:
        """Return what is new: snapshots, or changes; [] after ``timeout``; None once closed.

        The first call returns the snapshots of the classes (or, when subscribed after a
        cursor that is still in the log, the changes since it).
        """
        if self._initial is not None:
            initial, self._initial = self._initial, None
            return initial
        while True:
            messages = self.board._take(self)  # noqa: SLF001 - the board owns the lock
            if messages is None or messages:
                return messages
            try:
                await asyncio.wait_for(self._event.wait(), timeout)
            except TimeoutError:
                return []

    def close(self) -> None:
        """Stop receiving; the board forgets this subscription."""
        self.board._unsubscribe(self)  # noqa: SLF001 - the board owns the lock

    # -- called by the board, under its lock ------------------------------------------

    def _push(self, change: DeviceChange, device_classes: frozenset[str]) -> bool:
        """Queue a change, merged with the device's pending one; return True if merged."""
        if self.is_reset or self.is_closed:
            return False
        if not device_classes & self.class_ids:
            change = DeviceChange(change.device_id, {"removed": True}, change.seq, None)
        previous = self._pending.get(change.device_id)
        merged = previous is not None
        if previous is not None and not (change.is_removal or previous.is_removal):
            received = previous.received_ms if previous.received_ms else change.received_ms
            change = DeviceChange(
                change.device_id, {**previous.fields, **change.fields}, change.seq, received
            )
        elif previous is None and len(self._pending) >= self._max_pending:
            self.is_reset = True  # the client gets fresh snapshots instead of this backlog
            self._pending.clear()
        if not self.is_reset:
            self._pending[change.device_id] = change
        self._wake()
        return merged

    def _wake(self) -> None:
        if self._woken:
            return
        self._woken = True
        self._woken_at = time.monotonic()
        try:
            self._loop.call_soon_threadsafe(self._event.set)
        except RuntimeError:  # its event loop is closed: nobody will read this any more
            self.is_closed = True

    def _drain(self) -> list[DeviceChange]:
        changes = list(self._pending.values())
        self._pending.clear()
        self._woken = False
        self._event.clear()
        return changes


class PollPacer:
    """Suggests when a polling client should come back: longer as more clients poll."""

    def __init__(self, interval_ms: int) -> None:
        self.interval_ms = interval_ms
        self._last_poll: OrderedDict[str, int] = OrderedDict()

    def retry_after_ms(self, caller: str, now_ms: int) -> int:
        """Note that ``caller`` polled; return the interval to suggest to it."""
        self._last_poll[caller] = now_ms
        self._last_poll.move_to_end(caller)
        while self._last_poll and (
            len(self._last_poll) > MAX_POLLERS_TRACKED
            or next(iter(self._last_poll.values())) < now_ms - POLLERS_WINDOW_MS
        ):
            self._last_poll.popitem(last=False)
        steps = min(MAX_POLL_STEPS, max(1, math.ceil(len(self._last_poll) / POLLERS_PER_STEP)))
        return self.interval_ms * steps


class MonitorBoard:
    """Every tracked device's presence, readable per class as snapshots and changes."""

    def __init__(
        self,
        settings: MonitorSettings,
        clock: Clock,
        metrics: HopperMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.rules = PresenceRules.from_settings(settings)
        self.clock = clock
        self._metrics = metrics or HopperMetrics()
        self._lock = threading.Lock()
        self._devices: OrderedDict[str, DevicePresence] = OrderedDict()  # least recent first
        self._class_devices: dict[str, set[str]] = {}
        self._roster = Roster()
        self._seq = clock.now_ms() * 1000
        self._log: deque[tuple[int, str, frozenset[str]]] = deque(maxlen=settings.change_log_max)
        self._log_floor = self._seq  # every change after this cursor is still in the log
        self._held: set[str] = set()
        self._subscriptions: set[Subscription] = set()
        self._subscribers_of: dict[str, set[Subscription]] = {}
        self._next_sweep_ms = 0
        self._is_closing = False
        self._pacer = PollPacer(settings.poll_interval_ms)
        self.delivery_seconds = self._metrics.monitor_delivery_seconds
        self._interval_ms = settings.device_update_interval_ms
        self._sweep_ms = max(10, min(MAX_SWEEP_MS, self.rules.stale_after_ms // 4))
        self._idle_subscriber_secs = max(MIN_SUBSCRIBER_IDLE_SECS, 4 * settings.sse_heartbeat_secs)

    # -- what the feed calls ----------------------------------------------------------

    @property
    def cursor(self) -> int:
        """Return the cursor of the latest change."""
        return self._seq

    @property
    def roster(self) -> Roster:
        """Return the names and classes in use."""
        return self._roster

    def observe(self, sightings: Iterable[Sighting], *, emit: bool = True) -> None:
        """Apply sightings in order; emit the changes (``emit=False``: warm start, quietly)."""
        now = self.clock.now_ms()
        with self._lock:
            for sighting in sightings:
                device = self._devices.get(sighting.device_id)
                is_new = device is None
                if device is None:
                    if len(self._devices) >= self.settings.max_devices:
                        self._forget(next(iter(self._devices.values())), "device_limit")
                    device = self._devices[sighting.device_id] = DevicePresence(sighting.device_id)
                else:
                    self._devices.move_to_end(sighting.device_id)
                changed = device.apply(sighting)
                self._after_change(device, changed, sighting.received_ms, now, is_new, emit)

    def tick(self) -> None:
        """Emit held changes that are due; each sweep, recompute states and forget old devices."""
        now = self.clock.now_ms()
        with self._lock:
            if self._held:
                for device_id in list(self._held):
                    device = self._devices[device_id]  # a forgotten device leaves _held
                    if now - device.last_emit_ms >= self._interval_ms:
                        self._flush(device, now)
            if now >= self._next_sweep_ms:
                self._next_sweep_ms = now + self._sweep_ms
                self._sweep(now)

    def set_roster(self, roster: Roster) -> None:
        """Use new names and classes; devices that moved or were renamed are re-sent whole."""
        now = self.clock.now_ms()
        with self._lock:
            old = self._roster
            self._roster = roster
            for device in list(self._devices.values()):
                student_was = old.students.get(device.username)
                book_was = old.books.get(device.book_id or "")
                if (
                    roster.classes_of_user(device.username) != device.classes
                    or roster.students.get(device.username) != student_was
                    or roster.books.get(device.book_id or "") != book_was
                ):
                    self._after_change(device, {}, None, now, True, True)
            for class_id in list(self._class_devices):
                if not self._class_devices[class_id]:
                    del self._class_devices[class_id]

    def close_subscriptions(self) -> None:
        """End every subscription and refuse new ones (the node is stopping)."""
        with self._lock:
            self._is_closing = True
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription.close()

    # -- what readers call ------------------------------------------------------------

    def has_class(self, class_id: str) -> bool:
        """Tell whether ``class_id`` is a class the monitor knows (roster or devices)."""
        with self._lock:
            return class_id in self._roster.classes or class_id in self._class_devices

    def snapshot(self, class_id: str) -> ClassSnapshot | None:
        """Return the class's devices and unseen students now; None for an unknown class."""
        with self._lock:
            if class_id not in self._roster.classes and class_id not in self._class_devices:
                return None
            return self._snapshot(class_id, self.clock.now_ms())

    def changes_after(self, class_id: str, cursor: int | None) -> ClassChanges | None:
        """Return the class's changes after ``cursor``, coalesced per device (a reset when old)."""
        with self._lock:
            if class_id not in self._roster.classes and class_id not in self._class_devices:
                return None
            if not self._is_resumable(cursor):
                if cursor is not None:
                    self._metrics.monitor_resets.labels(reason="cursor_expired").inc()
                snapshot = self._snapshot(class_id, self.clock.now_ms())
                return ClassChanges(class_id, self._seq, [], snapshot)
            assert cursor is not None
            return ClassChanges(class_id, self._seq, self._changes_since(class_id, cursor), None)

    def poll_retry_after_ms(self, caller: str) -> int:
        """Note that ``caller`` polled; return how long it should wait before the next poll."""
        with self._lock:
            return self._pacer.retry_after_ms(caller, self.clock.now_ms())

    def device_tiles(self) -> list[DeviceTile]:
        """Return every tracked device's tile, by device id (for the devices page)."""
        with self._lock:
            return [self._tile(self._devices[d]) for d in sorted(self._devices)]

    def subscribe(self, class_ids: Sequence[str], *, after: int | None = None) -> Subscription:
        """Open a subscription to classes (in the running event loop); raise MonitorBusyError.

        Its first ``next()`` returns each class's snapshot, or, when ``after`` is a cursor
        still in the log, only the changes since (a client resuming with ``Last-Event-ID``).
        """
        loop = asyncio.get_running_loop()
        wanted = frozenset(class_ids)
        if not wanted or len(wanted) > MAX_SUBSCRIBED_CLASSES:
            raise ValueError(f"subscribe to 1 to {MAX_SUBSCRIBED_CLASSES} classes")
        with self._lock:
            if self._is_closing:
                raise MonitorBusyError("the live monitor is stopping; reconnect later")
            if len(self._subscriptions) >= self.settings.max_subscribers:
                self._metrics.connections_refused.labels(reason="max_monitor_subscribers").inc()
                raise MonitorBusyError(
                    f"{self.settings.max_subscribers} live monitor subscribers already "
                    "(monitor.max_subscribers)"
                )
            subscription = Subscription(self, wanted, loop, self.settings.client_queue_max_devices)
            if after is not None and self._is_resumable(after):
                changes: dict[str, DeviceChange] = {}
                for class_id in sorted(wanted):
                    changes.update((c.device_id, c) for c in self._changes_since(class_id, after))
                subscription._initial = list(changes.values())  # noqa: SLF001 - its creator
            else:
                if after is not None:
                    self._metrics.monitor_resets.labels(reason="cursor_expired").inc()
                now = self.clock.now_ms()
                subscription._initial = [self._snapshot(c, now) for c in sorted(wanted)]  # noqa: SLF001
            self._subscriptions.add(subscription)
            for class_id in wanted:
                self._subscribers_of.setdefault(class_id, set()).add(subscription)
            self._metrics.monitor_subscribers.set(len(self._subscriptions))
        return subscription

    # -- inside the lock --------------------------------------------------------------

    def _take(self, subscription: Subscription) -> list[Message] | None:
        with self._lock:
            if subscription.is_closed:
                return None
            if subscription.is_reset:
                subscription.is_reset = False
                subscription._drain()  # noqa: SLF001
                self._metrics.monitor_resets.labels(reason="queue_full").inc()
                now = self.clock.now_ms()
                return [self._snapshot(c, now) for c in sorted(subscription.class_ids)]
            return list(subscription._drain())  # noqa: SLF001

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            subscription.is_closed = True
            subscription._wake()  # noqa: SLF001 - a reader waiting on it returns None
            self._subscriptions.discard(subscription)
            for class_id in subscription.class_ids:
                subscribers = self._subscribers_of.get(class_id)
                if subscribers is not None:
                    subscribers.discard(subscription)
                    if not subscribers:
                        del self._subscribers_of[class_id]
            self._metrics.monitor_subscribers.set(len(self._subscriptions))

    def _is_resumable(self, cursor: int | None) -> bool:
        return cursor is not None and self._log_floor <= cursor <= self._seq

    def _changes_since(self, class_id: str, cursor: int) -> list[DeviceChange]:
        """Each device of ``class_id`` changed after ``cursor``, as its whole tile (or removed)."""
        devices: dict[str, int] = {}
        for seq, device_id, classes in reversed(self._log):
            if seq <= cursor:
                break
            if class_id in classes and device_id not in devices:
                devices[device_id] = seq
        out = []
        for device_id, seq in reversed(devices.items()):
            device = self._devices.get(device_id)
            if device is not None and class_id in device.classes:
                fields = self._tile(device).as_dict()
                del fields["device_id"]
                out.append(DeviceChange(device_id, fields, seq, None))
            else:
                out.append(DeviceChange(device_id, {"removed": True}, seq, None))
        return out

    def _snapshot(self, class_id: str, now_ms: int) -> ClassSnapshot:
        roster = self._roster
        tiles = sorted(
            (self._tile(self._devices[d]) for d in self._class_devices.get(class_id, ())),
            key=lambda t: (t.display_name or t.username, t.device_id),
        )
        seen = {tile.username for tile in tiles}
        not_seen = [s for s in roster.members.get(class_id, ()) if s.username not in seen]
        klass = roster.classes.get(class_id)
        return ClassSnapshot(
            class_id,
            None if klass is None else klass.name,
            self._seq,
            now_ms,
            round(self.settings.heartbeat_interval_secs * 1000),
            tiles,
            not_seen,
        )

    def _tile(self, device: DevicePresence) -> DeviceTile:
        student = self._roster.students.get(device.username)
        title, pages = self._roster.books.get(device.book_id or "", (None, None))
        return DeviceTile(
            device.device_id,
            device.username,
            None if student is None else student.student_id,
            None if student is None else student.display_name,
            device.state,
            device.app,
            device.book_id,
            title,
            device.page,
            pages,
            device.screen_on,
            device.battery_pct,
            device.app_version,
            device.last_seen_ms,
        )

    def _after_change(
        self,
        device: DevicePresence,
        changed: dict[str, Any],
        received_ms: int | None,
        now_ms: int,
        is_whole: bool,
        emit: bool,
    ) -> None:
        """Derive names, classes, book and state from what changed; queue the change."""
        roster = self._roster
        left: frozenset[str] = frozenset()
        if is_whole or "username" in changed:
            classes = roster.classes_of_user(device.username)
            if classes != device.classes:
                left = device.classes - classes
                for class_id in left:
                    self._class_devices.get(class_id, set()).discard(device.device_id)
                for class_id in classes - device.classes:
                    self._class_devices.setdefault(class_id, set()).add(device.device_id)
                    is_whole = True  # new to a class: its subscribers need the whole tile
                device.classes = classes
            student = roster.students.get(device.username)
            changed["student_id"] = None if student is None else student.student_id
            changed["display_name"] = None if student is None else student.display_name
        if "book_id" in changed:
            title, pages = roster.books.get(device.book_id or "", (None, None))
            changed["book_title"], changed["page_count"] = title, pages
        state = self.rules.state(device, now_ms)
        if state != device.state:
            device.state = state
            changed["state"] = state.value
        if not emit:
            return
        if is_whole:
            changed = self._tile(device).as_dict()
            del changed["device_id"]
        if changed or left:
            self._queue(device, changed, received_ms, left, now_ms)

    def _queue(
        self,
        device: DevicePresence,
        fields: dict[str, Any],
        received_ms: int | None,
        left: frozenset[str],
        now_ms: int,
    ) -> None:
        if device.held is not None:
            device.held.update(fields)
            device.held_left |= left
            if device.held_received_ms is None:
                device.held_received_ms = received_ms
            if now_ms - device.last_emit_ms >= self._interval_ms:
                self._flush(device, now_ms)
        elif now_ms - device.last_emit_ms >= self._interval_ms:
            self._emit(device, fields, received_ms, left, now_ms)
        else:
            device.held, device.held_received_ms, device.held_left = dict(fields), received_ms, left
            self._held.add(device.device_id)

    def _flush(self, device: DevicePresence, now_ms: int) -> None:
        if device.held is None:
            return
        fields, received, left = device.held, device.held_received_ms, device.held_left
        device.held, device.held_received_ms, device.held_left = None, None, frozenset()
        self._held.discard(device.device_id)
        self._emit(device, fields, received, left, now_ms)

    def _emit(
        self,
        device: DevicePresence,
        fields: dict[str, Any],
        received_ms: int | None,
        left: frozenset[str],
        now_ms: int,
    ) -> None:
        device.last_emit_ms = now_ms
        # The device's own frozenset when it left none: the log holds no copy of it.
        affected = device.classes | (left - device.classes) if left else device.classes
        if not affected:
            return  # in no class: nobody can follow it, so nothing to log or send
        self._seq += 1
        if len(self._log) == self._log.maxlen:
            self._log_floor = self._log[0][0]  # about to leave the log: resume only after it
        self._log.append((self._seq, device.device_id, affected))
        self._metrics.monitor_changes.inc()
        change = DeviceChange(device.device_id, fields, self._seq, received_ms)
        targets: set[Subscription] = set()
        for class_id in affected:
            targets.update(self._subscribers_of.get(class_id, ()))
        merged = 0
        for subscription in targets:
            merged += subscription._push(change, device.classes)  # noqa: SLF001
        if merged:
            self._metrics.monitor_coalesced.inc(merged)

    def _forget(self, device: DevicePresence, reason: str) -> None:
        """Drop a device; its classes' subscribers see it removed."""
        del self._devices[device.device_id]
        self._held.discard(device.device_id)
        left = device.classes
        for class_id in left:
            self._class_devices.get(class_id, set()).discard(device.device_id)
        device.classes = frozenset()
        device.held = None
        if left:
            self._emit(device, {"removed": True}, None, left, self.clock.now_ms())
        self._metrics.monitor_forgotten.labels(reason=reason).inc()

    def _sweep(self, now_ms: int) -> None:
        forget_before = now_ms - self.rules.forget_after_ms
        while self._devices:
            oldest = next(iter(self._devices.values()))
            if oldest.last_seen_ms >= forget_before:
                break
            self._forget(oldest, "forgotten")
        counts = dict.fromkeys(DeviceState, 0)
        for device in self._devices.values():
            state = self.rules.state(device, now_ms)
            counts[state] += 1
            if state != device.state:
                device.state = state
                self._queue(device, {"state": state.value}, None, frozenset(), now_ms)
        for state, count in counts.items():
            self._metrics.monitor_devices.labels(state=state.value).set(count)
        stuck_since = time.monotonic() - self._idle_subscriber_secs
        for subscription in [
            s
            for s in self._subscriptions
            if s._woken and s._woken_at < stuck_since  # noqa: SLF001
        ]:
            logger.warning("Closed a live monitor subscription whose reader stopped reading.")
            subscription.is_closed = True
            subscription._wake()  # noqa: SLF001
            self._subscriptions.discard(subscription)
            for class_id in subscription.class_ids:
                self._subscribers_of.get(class_id, set()).discard(subscription)
        self._metrics.monitor_subscribers.set(len(self._subscriptions))
