"""The bounded intake queue and the group-commit writer behind every source of a topology.

Sources are admitted first (``ingest/admission.py``: bounded by payloads and bytes, in
arrival order, with a fair share per client), enqueue a payload with a completion
callback, and acknowledge their client only when that callback reports the commit. One
writer thread takes the queued payloads, runs the topology's chain on each, commits the
group to every durable sink of the topology (the first, its record, decides what is new),
then completes the payloads (the acks), then offers the new events to the live sinks.
The stages never run in the sources' threads: stages and commits are CPU work under one
GIL, and two busy threads handing the GIL to each other ran 10-20% slower than one
thread doing both (bench/README.md). So on SQLite the writer runs the stages itself; on
a sink whose commit mostly waits for a server (``DurableSink.commit_waits_on_server``),
a stages thread prepares the next group while the writer waits for the current commit.
A full queue is back pressure: sources wait (WebSocket, MQTT) or, after waiting in line
for ``ingest.http_admission_wait_secs``, answer 503 (HTTP).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from hopper.clock import Clock
from hopper.errors import HopperError
from hopper.events.model import RECORDED_REASONS, WHOLE_PAYLOAD, Event, Rejection, RejectReason
from hopper.ingest.admission import Admission, Ticket
from hopper.ingest.base import BatchOutcome, Delivery, OnDone
from hopper.observe.metrics import HopperMetrics
from hopper.pipeline.chain import Chain
from hopper.pipeline.stage import ANY_ORIGIN, Origin
from hopper.sinks.base import DurableSink, LiveSink, PendingWrite

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Item:
    on_done: OnDone
    write: PendingWrite
    outcome: BatchOutcome
    ticket: Ticket | None

    @property
    def size(self) -> int:
        return len(self.write.events) + len(self.write.rejections)


_STOP = object()


class Intake:
    """Bounded queue of payloads and the single writer that group-commits them."""

    def __init__(
        self,
        chain: Chain,
        sinks: Sequence[DurableSink],
        live_sinks: Sequence[LiveSink],
        metrics: HopperMetrics,
        clock: Clock,
        *,
        max_batches: int = 1024,
        max_bytes: int = 64 * 1024 * 1024,
        client_share: float = 0.25,
        commit_max_events: int = 5000,
        max_payload_bytes: int = 4 * 1024 * 1024,
        error_raw_max_bytes: int = 4096,
        ack_max_results: int = 100,
    ) -> None:
        if not sinks:
            raise ValueError("a topology needs at least one durable sink")
        self._chain = chain
        self._sinks = list(sinks)
        self._live = list(live_sinks)
        self._metrics = metrics
        self._clock = clock
        self.admission = Admission(max_batches, max_bytes, client_share)
        self.capacity = max_batches
        self._commit_max_events = commit_max_events
        self.max_payload_bytes = max_payload_bytes
        self._error_raw_max = error_raw_max_bytes
        self._ack_max_results = ack_max_results
        self._queue: queue.SimpleQueue[Delivery | object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="hopper-writer", daemon=True)
        # At most one prepared group waits for the writer: the admission stays the bound.
        self._groups: queue.Queue[list[_Item] | object] = queue.Queue(maxsize=1)
        self._stager: threading.Thread | None = None
        if any(sink.commit_waits_on_server for sink in self._sinks):
            self._stager = threading.Thread(target=self._stage, name="hopper-stages", daemon=True)
        self._sink_metrics = [metrics.component(sink.name) for sink in self._sinks]
        metrics.queue_capacity.set(max_batches)
        metrics.queue_capacity_bytes.set(max_bytes)
        self.last_commit_ms: int | None = None
        self.last_error: str | None = None
        self.is_store_healthy = True  # every durable sink's last commit attempt worked

    # -- admission: the bound of the queue ---------------------------------------------

    @property
    def depth(self) -> int:
        """Return how many payloads are admitted and not yet committed."""
        return self.admission.payloads

    def screen(self, payload: bytes) -> tuple[bytes, Rejection | None]:
        """Cut a payload over ``max_payload_bytes`` to the prefix kept of it, refused.

        Sources call this before admission, so the queue never holds an oversized payload.
        """
        if len(payload) <= self.max_payload_bytes:
            return payload, None
        rejection = Rejection(
            WHOLE_PAYLOAD,
            RejectReason.TOO_LARGE,
            f"payload of {len(payload)} bytes is larger than max_body_bytes="
            f"{self.max_payload_bytes}",
            payload,
        ).bounded(self._error_raw_max)
        return rejection.raw, rejection

    def try_admit(self, client: str = "", size: int = 0) -> Ticket | None:
        """Admit a payload now if nobody waits and it fits (no waiting)."""
        return self._admitted(self.admission.try_admit(client, size))

    async def admit(self, client: str, size: int, timeout: float | None = None) -> Ticket | None:
        """Wait in line for admission (None after ``timeout`` seconds)."""
        return self._admitted(await self.admission.admit(client, size, timeout))

    def admit_blocking(
        self, client: str, size: int, *, is_abandoned: Callable[[], bool], poll_secs: float = 0.5
    ) -> Ticket | None:
        """Wait in line for admission in a thread, until ``is_abandoned()``."""
        ticket = self.admission.admit_blocking(client, size, poll_secs, is_abandoned=is_abandoned)
        return self._admitted(ticket)

    def release(self, ticket: Ticket) -> None:
        """Give back an admission (after completion, or when a source gives up)."""
        self.admission.release(ticket)
        self._metrics.queue_depth.set(self.admission.payloads)
        self._metrics.queue_bytes.set(self.admission.bytes)

    def count_refused(self, reason: str) -> None:
        """Count a request a source refused at the edge of the process (a limit)."""
        self._metrics.connections_refused.labels(reason=reason).inc()

    def _admitted(self, ticket: Ticket | None) -> Ticket | None:
        if ticket is not None:
            self._metrics.queue_depth.set(self.admission.payloads)
            self._metrics.queue_bytes.set(self.admission.bytes)
        return ticket

    # -- submitting ---------------------------------------------------------------------

    def enqueue(
        self,
        payload: bytes,
        source: str,
        on_done: OnDone,
        *,
        ticket: Ticket | None,
        rejection: Rejection | None = None,
        origin: Origin = ANY_ORIGIN,
    ) -> None:
        """Queue an admitted payload; the writer runs the stages on it.

        ``on_done`` runs in the writer thread after the commit, and the ticket is given
        back just before. ``rejection`` is set when the source itself refused the payload
        (too large, wrong media type): it is recorded.
        """
        self._queue.put(Delivery(payload, source, on_done, rejection, ticket, origin))

    async def enqueue_and_wait(
        self,
        payload: bytes,
        source: str,
        *,
        ticket: Ticket | None,
        rejection: Rejection | None = None,
        origin: Origin = ANY_ORIGIN,
    ) -> BatchOutcome:
        """Queue an admitted payload, and wait for its commit."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[BatchOutcome] = loop.create_future()

        def resolve(outcome: BatchOutcome) -> None:
            if not future.done():
                future.set_result(outcome)

        def on_done(outcome: BatchOutcome) -> None:
            loop.call_soon_threadsafe(resolve, outcome)

        self.enqueue(payload, source, on_done, ticket=ticket, rejection=rejection, origin=origin)
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
            if not isinstance(first, Delivery):
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
                if not isinstance(delivery, Delivery):
                    stopping = True
                    break
                rows += self._add(group, delivery)
            if group:
                yield group

    def _add(self, group: list[_Item], delivery: Delivery) -> int:
        """Run the stages on a delivery and add it to the group; return its row count."""
        try:
            item = self._prepare(delivery)
        except Exception:
            # Stages return bad data as rejections; an exception here is a bug. It must
            # not kill the writer: this payload fails alone and is not acknowledged.
            logger.exception("Stages failed on a payload from %s; not stored.", delivery.source)
            self._metrics.component(delivery.source).error("stages")
            outcome = BatchOutcome(error="internal error in the stages; nothing stored")
            write = PendingWrite(delivery.source, 0, [])
            self._complete(_Item(delivery.on_done, write, outcome, delivery.ticket))
            return 0
        group.append(item)
        return item.size

    def _prepare(self, delivery: Delivery) -> _Item:
        payload, source, rejection = delivery.payload, delivery.source, delivery.rejection
        counters = self._metrics.component(source)
        if rejection is None:
            payload, rejection = self.screen(payload)
        if rejection is not None:
            events, rejected = [], [rejection]
            counters.rejected(rejection.reason.value)
        else:
            result = self._chain.run(payload, delivery.origin)
            events, rejected = result.passed, result.rejected
        counters.received.inc(len(events) + len(rejected))
        outcome = BatchOutcome(max_results=self._ack_max_results)
        to_record = []
        for r in rejected:
            outcome.add_rejection(r)
            if r.reason in RECORDED_REASONS:
                # Bounded now, not at the store: the full bytes need not wait in the queue.
                to_record.append(r.bounded(self._error_raw_max))
        write = PendingWrite(source, self._clock.now_ms(), events, to_record)
        return _Item(delivery.on_done, write, outcome, delivery.ticket)

    def _commit(
        self, group: list[_Item], first_sink: int = 0, record: list[list[Event]] | None = None
    ) -> None:
        """Commit a group to every durable sink from ``first_sink`` on, then complete it.

        ``record`` holds the first sink's results when it has already committed the group
        (a later sink failed and the group is being retried payload by payload).
        """
        writes = [item.write for item in group]
        started = time.perf_counter()
        for index in range(first_sink, len(self._sinks)):
            stored = self._commit_with_retry(index, writes)
            if stored is None and len(group) > 1:
                # Some payload's rows broke the transaction: commit each alone from this
                # sink on, so that only that payload fails.
                for n, item in enumerate(group):
                    self._commit([item], index, None if record is None else [record[n]])
                return
            if stored is None:
                message = "commit failed unexpectedly; nothing stored, resend later"
                group[0].outcome.error = message
                self._complete(group[0])
                return
            if index == 0:
                record = stored
        assert record is not None
        elapsed = time.perf_counter() - started
        self._metrics.commit_seconds.observe(elapsed)
        self._metrics.commit_events.observe(sum(len(w.events) for w in writes))
        self.last_commit_ms = self._clock.now_ms()
        published: list[tuple[list[Event], int]] = []
        for item, new in zip(group, record, strict=True):
            write, outcome = item.write, item.outcome
            outcome.accepted = len(new)
            # The record sink is the cross-batch dedup: what it refused are duplicates.
            outcome.duplicates += len(write.events) - len(new)
            self._metrics.component(write.source).sent.inc(len(new))
            self._complete(item)
            published.append((new, write.received_ms))
        # Ack first, then publish: live sinks are best effort, the durable ones the record.
        for sink in self._live:
            sink.offer(published)

    def _complete(self, item: _Item) -> None:
        if item.ticket is not None:
            self.release(item.ticket)
        try:
            item.on_done(item.outcome)
        except Exception:  # a source's callback must never kill the writer
            logger.exception("Acknowledgement callback of source %s failed.", item.write.source)
            self._metrics.component(item.write.source).error("ack_callback")

    def _commit_with_retry(self, index: int, writes: list[PendingWrite]) -> list[list[Any]] | None:
        """Commit to one sink, retrying while it is unavailable; None after an unexpected error."""
        sink, counters = self._sinks[index], self._sink_metrics[index]
        delay = 0.1
        while True:
            try:
                stored = sink.commit(writes)
            except HopperError as exc:
                # Keep the batches and retry: the queue fills meanwhile, which is back pressure.
                self.is_store_healthy = False
                self.last_error = str(exc)
                counters.error(type(exc).__name__)
                logger.warning(
                    "Commit to %s failed, retrying in %.1f s: %s.", sink.name, delay, exc
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            except Exception as exc:
                self.last_error = repr(exc)
                counters.error(type(exc).__name__)
                logger.exception(
                    "Unexpected error in the commit to %s; batches not acknowledged.", sink.name
                )
                return None
            self.is_store_healthy = True
            offered = sum(len(w.events) for w in writes)
            new = sum(len(events) for events in stored)
            counters.received.inc(offered)
            counters.sent.inc(new)
            counters.rejected(RejectReason.DUPLICATE.value, offered - new)
            return stored
