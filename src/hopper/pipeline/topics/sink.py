"""TopicSink: a durable sink that appends every passed event to a topic, keyed by device.

The value of each record is the event's exact raw protobuf bytes (what ``raw_events``
keeps and ``protos`` publishes), the key its device id, so one device's events stay in
order on one partition. Every passed event is appended, including those the record sink
found already stored: after a crash between the store's commit and the topic's, the
redelivered events still reach the topic, and its consumers dedup.
"""

from __future__ import annotations

from collections.abc import Sequence

from hopper.events.model import Event
from hopper.pipeline.topics.base import TopicLog
from hopper.sinks.base import PendingWrite


class TopicSink:
    """Appends events to ``topic``; durable once ``commit`` returns."""

    def __init__(self, log: TopicLog, topic: str, partitions: int) -> None:
        self.name = f"topic:{topic}"
        self.topic = topic
        self._log = log
        self._partitions = partitions
        self._is_ready = False
        # An embedded log commits in this process; a broker is waited on.
        self.commit_waits_on_server = log.backend != "sqlite"

    def commit(self, writes: Sequence[PendingWrite]) -> list[list[Event]]:
        """Append every write's events in one call; return them all (no dedup here)."""
        if not self._is_ready:
            self._log.ensure_topic(self.topic, self._partitions)  # BackendUnavailable: retried
            self._is_ready = True
        records = [(e.device_id.encode(), e.raw) for w in writes for e in w.events]
        if records:
            self._log.append(self.topic, records)
        return [list(w.events) for w in writes]

    def close(self) -> None:
        """Nothing of its own to release: the topic log is the process's."""
