"""Topic source: a consumer group member that feeds a topic's records into the intake.

Each poll's records (one event's raw protobuf bytes each, as the edge's topic sink writes
them) become one delivery, an ``EventBatch`` of those bytes, so the same chain (decode,
validate, dedup) runs on them. The offsets are committed only after every durable sink of
the topology has committed the delivery; a crash before that redelivers the records to
the group, and the record sink's dedup absorbs the repeats.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from hopper.errors import HopperError
from hopper.events.protobuf import encode_batch
from hopper.ingest.base import BatchOutcome
from hopper.ingest.intake import Intake
from hopper.pipeline.stage import Origin

if TYPE_CHECKING:
    from hopper.pipeline.topics.base import TopicConsumer, TopicLog, TopicRecord

logger = logging.getLogger(__name__)


class TopicEventSource:
    """Reads ``topic`` as a member of consumer group ``group`` until stopped."""

    def __init__(
        self,
        intake: Intake,
        log: TopicLog,
        topic: str,
        group: str,
        *,
        max_records: int = 2000,
        poll_secs: float = 0.5,
    ) -> None:
        self.name = f"topic:{topic}"
        self._intake = intake
        self._log = log
        self._topic = topic
        self._group = group
        self._max_records = max_records
        self._poll_secs = poll_secs
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"hopper-{self.name}", daemon=True)
        self.is_connected = False
        self.last_error: str | None = None
        self.consumed = 0
        self.committed = 0

    def start(self) -> None:
        """Join the group and start consuming in a thread of its own."""
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the delivery in flight (commit its offsets), then leave the group."""
        self._stopping.set()
        self._thread.join(timeout)

    @property
    def is_alive(self) -> bool:
        """Tell whether the consuming thread runs."""
        return self._thread.is_alive()

    def _run(self) -> None:
        delay = 0.2
        while not self._stopping.is_set():
            try:
                consumer = self._log.consumer(self._topic, self._group)
            except HopperError as exc:
                self._unavailable(exc, delay)
                delay = min(delay * 2, 5.0)
                continue
            try:
                self.is_connected = True
                delay = 0.2
                self._consume(consumer)
            except HopperError as exc:
                self._unavailable(exc, delay)
                delay = min(delay * 2, 5.0)
            finally:
                self.is_connected = False
                try:
                    consumer.close()
                except HopperError as exc:
                    logger.warning("Closing the consumer of %s failed: %s.", self.name, exc)

    def _unavailable(self, exc: HopperError, delay: float) -> None:
        self.last_error = str(exc)
        logger.warning("Topic source %s: %s; retrying in %.1f s.", self.name, exc, delay)
        self._stopping.wait(delay)

    def _consume(self, consumer: TopicConsumer) -> None:
        while not self._stopping.is_set():
            records = consumer.poll(self._max_records, self._poll_secs)
            if not records:
                continue
            self.consumed += len(records)
            outcome = self._deliver(records)
            if outcome is None:
                return  # stopping before it was admitted: the group gets them again
            if outcome.error is not None:
                # Not stored: replay these records (the writer already retried the sinks
                # while they were unavailable; this is a failure of the data or a bug).
                logger.warning("Delivery from %s failed: %s; replaying.", self.name, outcome.error)
                for partition, offset in _first_offsets(records).items():
                    consumer.seek(partition, offset)
                self._stopping.wait(1.0)
                continue
            consumer.commit(records)  # only now: every durable sink has them
            self.committed += len(records)

    def _deliver(self, records: list[TopicRecord]) -> BatchOutcome | None:
        payload, rejection = self._intake.screen(encode_batch(r.value for r in records))
        ticket = self._intake.admit_blocking(
            self.name, len(payload), is_abandoned=self._stopping.is_set
        )
        if ticket is None:
            return None
        done = threading.Event()
        outcomes: list[BatchOutcome] = []

        def on_done(outcome: BatchOutcome) -> None:
            outcomes.append(outcome)
            done.set()

        # Events from a topic were authorised where they came in: any school.
        origin = Origin(self.name, self.name, None)
        self._intake.enqueue(
            payload, self.name, on_done, ticket=ticket, rejection=rejection, origin=origin
        )
        while not done.wait(1.0):
            if not self._intake.is_alive:
                return BatchOutcome(error="the writer stopped")
        return outcomes[0]


def _first_offsets(records: list[TopicRecord]) -> dict[int, int]:
    first: dict[int, int] = {}
    for record in records:
        if record.partition not in first or record.offset < first[record.partition]:
            first[record.partition] = record.offset
    return first


def wait_idle(source: TopicEventSource, timeout: float) -> bool:
    """Wait until the source has committed all it consumed (for tests and shutdown)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if source.committed == source.consumed:
            return True
        time.sleep(0.05)
    return False
