"""The bounded intake queue and the group-commit writer behind every source.

Sources reserve a slot, enqueue a payload with a completion callback, and acknowledge
their client only when that callback reports the commit. One writer thread takes the
queued payloads, runs the stages on each (decode, validate, dedup), commits many
payloads per transaction, then completes them and publishes.
The stages never run in the sources' threads: stages and commits are CPU work under one
GIL, and two busy threads handing the GIL to each other ran 10-20% slower than one
thread doing both (bench/README.md). So on SQLite the writer runs the stages itself; on
a store whose commit mostly waits for a server (``EventStore.commit_waits_on_server``),
a stages thread prepares the next group while the writer waits for the current commit.
A full queue is back pressure: sources wait (WebSocket, MQTT) or answer 503 (HTTP).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from hopper.clock import Clock
from hopper.errors import HopperError
from hopper.events.model import RECORDED_REASONS, WHOLE_PAYLOAD, Event, Rejection, RejectReason
from hopper.observe.metrics import HopperMetrics
from hopper.pipeline.topology import EdgePipeline
from hopper.pubsub.publisher import Publisher
from hopper.store.base import EventStore, PendingWrite

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class BatchOutcome:
    """What became of one payload: told to the client in its acknowledgement."""

    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON body of an acknowledgement."""
        body: dict[str, Any] = {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": len(self.rejected),
            "results": [r.as_result() for r in self.rejected],
        }
        if self.error is not None:
            body["error"] = self.error
        return body


OnDone = Callable[[BatchOutcome], None]

# How much of a refused oversized payload is kept in reader_events_errors.
KEPT_PREFIX_BYTES = 1024


@dataclass(slots=True)
class _Delivery:
    """A payload as a source queued it, before the stages ran."""

    payload: bytes
    source: str
    on_done: OnDone
    rejection: Rejection | None


@dataclass(slots=True)
class _Item:
    on_done: OnDone
    write: PendingWrite
    outcome: BatchOutcome

    @property
    def size(self) -> int:
        return len(self.write.events) + len(self.write.rejections)


_STOP = object()


class Intake:
    """Bounded queue of payloads and the single writer that group-commits them."""

    def __init__(
        self,
        pipeline: EdgePipeline,
        store: EventStore,
        publisher: Publisher,
        metrics: HopperMetrics,
        clock: Clock,
        *,
        max_batches: int = 1024,
        commit_max_events: int = 5000,
        max_payload_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._pipeline = pipeline
        self._store = store
        self._publisher = publisher
        self._metrics = metrics
        self._clock = clock
        self.capacity = max_batches
        self._commit_max_events = commit_max_events
        self._max_payload_bytes = max_payload_bytes
        self._queue: queue.SimpleQueue[_Delivery | object] = queue.SimpleQueue()
        self._used = 0
        self._slots = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="hopper-writer", daemon=True)
        # At most one prepared group waits for the writer: the queue's slots stay the bound.
        self._groups: queue.Queue[list[_Item] | object] = queue.Queue(maxsize=1)
        self._stager: threading.Thread | None = None
        if store.commit_waits_on_server:
            self._stager = threading.Thread(target=self._stage, name="hopper-stages", daemon=True)
        self._store_metrics = metrics.component("store")
        metrics.queue_capacity.set(max_batches)
        self.last_commit_ms: int | None = None
        self.last_error: str | None = None
        self.is_store_healthy = True

    # -- slots: the bound of the queue -------------------------------------------------

    @property
    def depth(self) -> int:
        """Return how many payloads are reserved or waiting for the writer."""
        return self._used

    def try_acquire(self) -> bool:
        """Reserve a slot if one is free, without waiting."""
        with self._slots:
            if self._used >= self.capacity:
                return False
            self._used += 1
            self._metrics.queue_depth.set(self._used)
            return True

    def acquire_blocking(self, timeout: float) -> bool:
        """Reserve a slot, waiting up to ``timeout`` seconds (for threaded sources)."""
        with self._slots:
            if not self._slots.wait_for(lambda: self._used < self.capacity, timeout):
                return False
            self._used += 1
            self._metrics.queue_depth.set(self._used)
            return True

    async def acquire(self) -> None:
        """Reserve a slot, waiting in the event loop while the queue is full."""
        delay = 0.001
        while not self.try_acquire():
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    def release(self, count: int = 1) -> None:
        """Give back slots (after completion, or when a source gives up a reservation)."""
        with self._slots:
            self._used -= count
            self._metrics.queue_depth.set(self._used)
            self._slots.notify_all()

    # -- submitting ---------------------------------------------------------------------

    def enqueue(
        self, payload: bytes, source: str, on_done: OnDone, *, rejection: Rejection | None = None
    ) -> None:
        """Queue a payload for which a slot is held; the writer runs the stages on it.

        ``on_done`` runs in the writer thread after the commit. ``rejection`` is set when
        the source itself refused the payload (too large, wrong media type): it is recorded.
        """
        self._queue.put(_Delivery(payload, source, on_done, rejection))

    async def submit(
        self, payload: bytes, source: str, *, rejection: Rejection | None = None
    ) -> BatchOutcome:
        """Wait for a slot, queue the payload, and wait for its commit."""
        await self.acquire()
        return await self.enqueue_and_wait(payload, source, rejection=rejection)

    async def enqueue_and_wait(
        self, payload: bytes, source: str, *, rejection: Rejection | None = None
    ) -> BatchOutcome:
        """Queue a payload for which a slot is held, and wait for its commit."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[BatchOutcome] = loop.create_future()

        def resolve(outcome: BatchOutcome) -> None:
            if not future.done():
                future.set_result(outcome)

        def on_done(outcome: BatchOutcome) -> None:
            loop.call_soon_threadsafe(resolve, outcome)

        self.enqueue(payload, source, on_done, rejection=rejection)
        return await future

    # -- the writer ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread (and the stages thread, if the store has one)."""
        if self._stager is not None:
            self._stager.start()
        self._thread.start()

    @property
    def is_alive(self) -> bool:
        """Tell whether the writer thread runs."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Commit what is queued, then stop the writer."""
        self._queue.put(_STOP)
        if self._stager is not None and self._stager.is_alive():
            self._stager.join(timeout)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        if self._stager is None:
            for group in self._prepared_groups(yield_gil=False):
                self._commit(group)
            return
        while True:
            prepared = self._groups.get()
            if not isinstance(prepared, list):
                return  # _STOP
            self._commit(prepared)

    def _stage(self) -> None:
        for group in self._prepared_groups(yield_gil=True):
            self._groups.put(group)  # waits while the writer still has one
        self._groups.put(_STOP)

    def _prepared_groups(self, *, yield_gil: bool) -> Iterator[list[_Item]]:
        """Take what is queued, up to ``commit_max_events``, through the stages; until stop.

        With ``yield_gil`` (in the stages thread) the GIL is offered to the writer after
        each payload: a writer back from the server otherwise waits up to the 5 ms switch
        interval at each of a commit's round trips (measured: a PostgreSQL commit beside a
        busy stages thread ran at 17k events/s, 52k with the yield, 68-78k alone).
        """
        stopping = False
        while not stopping:
            first = self._queue.get()
            if not isinstance(first, _Delivery):
                return  # _STOP
            group: list[_Item] = []
            rows = self._add(group, first)
            while rows < self._commit_max_events:
                if yield_gil:
                    time.sleep(0)
                try:
                    delivery = self._queue.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(delivery, _Delivery):
                    stopping = True
                    break
                rows += self._add(group, delivery)
            if group:
                yield group

    def _add(self, group: list[_Item], delivery: _Delivery) -> int:
        """Run the stages on a delivery and add it to the group; return its row count."""
        try:
            item = self._prepare(delivery)
        except Exception:
            # Stages return bad data as rejections; an exception here is a bug. It must
            # not kill the writer: this payload fails alone and is not acknowledged.
            logger.exception("Stages failed on a payload from %s; not stored.", delivery.source)
            self._metrics.component(delivery.source).error("stages")
            outcome = BatchOutcome(error="internal error in the stages; nothing stored")
            self._complete(_Item(delivery.on_done, PendingWrite(delivery.source, 0, []), outcome))
            return 0
        group.append(item)
        return item.size

    def _prepare(self, delivery: _Delivery) -> _Item:
        payload, source, rejection = delivery.payload, delivery.source, delivery.rejection
        counters = self._metrics.component(source)
        if rejection is None and len(payload) > self._max_payload_bytes:
            rejection = Rejection(
                WHOLE_PAYLOAD,
                RejectReason.TOO_LARGE,
                f"payload of {len(payload)} bytes is larger than max_body_bytes="
                f"{self._max_payload_bytes}; first {KEPT_PREFIX_BYTES} bytes kept",
                payload[:KEPT_PREFIX_BYTES],
            )
        if rejection is not None:
            events, rejected = [], [rejection]
            counters.rejected(rejection.reason.value)
        else:
            result = self._pipeline.run(payload)
            events, rejected = result.passed, result.rejected
        counters.received.inc(len(events) + len(rejected))
        outcome = BatchOutcome()
        for r in rejected:
            if r.reason is RejectReason.DUPLICATE:
                outcome.duplicates += 1
            else:
                outcome.rejected.append(r)
        to_record = [r for r in rejected if r.reason in RECORDED_REASONS]
        write = PendingWrite(source, self._clock.now_ms(), events, to_record)
        return _Item(delivery.on_done, write, outcome)

    def _commit(self, group: list[_Item]) -> None:
        writes = [item.write for item in group]
        started = time.perf_counter()
        stored = self._commit_with_retry(writes)
        elapsed = time.perf_counter() - started
        if stored is None and len(group) > 1:
            # Some payload's rows broke the transaction: commit each alone, so only it fails.
            for item in group:
                self._commit([item])
            return
        if stored is None:
            group[0].outcome.error = "commit failed unexpectedly; nothing stored, resend later"
            self._complete(group[0])
            return
        self._metrics.commit_seconds.observe(elapsed)
        self._metrics.commit_events.observe(sum(len(w.events) for w in writes))
        self.last_commit_ms = self._clock.now_ms()
        published: list[tuple[list[Event], int]] = []
        for item, new in zip(group, stored, strict=True):
            write, outcome = item.write, item.outcome
            outcome.accepted = len(new)
            store_duplicates = len(write.events) - len(new)
            outcome.duplicates += store_duplicates
            # The store is the cross-batch dedup: it counts what it refused as duplicates.
            self._store_metrics.received.inc(len(write.events))
            self._store_metrics.sent.inc(len(new))
            self._store_metrics.rejected(RejectReason.DUPLICATE.value, store_duplicates)
            self._metrics.component(write.source).sent.inc(len(new))
            self._complete(item)
            published.append((new, write.received_ms))
        # Ack first, then publish: channels are best effort, the store is the record.
        self._publisher.offer_all(published)

    def _complete(self, item: _Item) -> None:
        self.release()
        try:
            item.on_done(item.outcome)
        except Exception:  # a source's callback must never kill the writer
            logger.exception("Acknowledgement callback of source %s failed.", item.write.source)
            self._metrics.component(item.write.source).error("ack_callback")

    def _commit_with_retry(self, writes: list[PendingWrite]) -> list[list[Any]] | None:
        """Commit, retrying while the store is unavailable; None after an unexpected error."""
        delay = 0.1
        while True:
            try:
                stored = self._store.commit(writes)
            except HopperError as exc:
                # Keep the batches and retry: the queue fills meanwhile, which is back pressure.
                self.is_store_healthy = False
                self.last_error = str(exc)
                self._store_metrics.error(type(exc).__name__)
                logger.warning("Store commit failed, retrying in %.1f s: %s.", delay, exc)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            except Exception as exc:
                self.last_error = repr(exc)
                self._store_metrics.error(type(exc).__name__)
                logger.exception("Unexpected error in the store commit; batches not acknowledged.")
                return None
            self.is_store_healthy = True
            return stored
