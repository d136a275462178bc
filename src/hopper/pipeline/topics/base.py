"""TopicLog: durable, partitioned, append-only topics read by consumer groups.

Guarantees every backend gives (each shown by ``tests/integration/pipeline/
test_topic_log_contract.py`` against the real servers):

- **Durable appends.** ``append`` returns only once every record is stored by the backend
  (an SQLite commit; Kafka ``acks=all``; a JetStream publish ack). A failure raises, and
  then any part of the call may or may not be stored: retrying may duplicate records
  (at-least-once), never lose them.
- **Partitions and order.** A topic has a fixed number of partitions. Records with the
  same key go to the same partition: ``crc32(key) % partitions`` in every backend (the
  same function as librdkafka's ``consistent`` partitioner, not Java Kafka's murmur2).
  The keyless records of one ``append`` share one partition, chosen in turn call after
  call. Offsets increase within a partition, in append order; they are contiguous on
  SQLite and Kafka, only increasing on NATS (the stream sequence, shared by partitions).
- **Consumer groups, at least once.** The partitions of a topic are shared among the
  live members of a group; each partition has one owner at a time once the group has
  settled. ``commit`` stores, per partition, the offset after the highest record given;
  it survives a crash of the consumer. Records not committed are delivered again to the
  group (to the partition's next owner, or to a new member after a restart). A member
  that has not polled for ``session_timeout_secs`` loses its partitions.
- **Replay.** ``seek`` and ``seek_to_time`` move the member's position on a partition it
  owns; the next poll reads from there.
- **Retention.** Records older than ``retention_secs`` are removed: by the brokers
  themselves (Kafka ``retention.ms``, JetStream ``max_age``, set when the topic is
  created), by ``retain`` on SQLite. ``retain`` is a no-op returning 0 where the broker
  enforces it.
- **Errors.** ``BackendUnavailable`` when the server cannot be reached or does not answer
  within ``request_timeout_secs`` (retryable); ``TopicNotFoundError`` when a topic was
  never created with ``ensure_topic`` (append and consumer never create topics, so a
  typo cannot create a topic with the wrong partition count); ``TopicError`` for other
  requests that cannot succeed as asked (a bad name, a seek on a partition not owned).
  An empty append is a no-op.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from hopper.errors import HopperError

DAY_SECS = 86_400

# Topic and group names: safe as Kafka topic names, NATS subject tokens and stream names.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,200}")

Start = Literal["earliest", "latest"]
KeyedValue = tuple[bytes | None, bytes]


class TopicError(HopperError):
    """A topic request that cannot succeed as asked; retrying will not help."""


class TopicNotFoundError(TopicError):
    """The topic does not exist: create it with ``ensure_topic`` first."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"Topic {topic!r} does not exist: create it with ensure_topic first.")
        self.topic = topic


class RecordTooLargeError(TopicError):
    """A record is larger than ``topics.max_record_bytes``; nothing of the append was sent."""


@dataclass(frozen=True, slots=True)
class TopicRecord:
    """One record read from a topic."""

    topic: str
    partition: int
    offset: int  # increasing per partition; the position after it is offset + 1
    key: bytes | None
    value: bytes
    timestamp_ms: int  # when appended: broker time on NATS, the appender's clock elsewhere


class TopicConsumer(Protocol):
    """One member of a consumer group: the group's partitions are shared among its live members.

    A consumer is used from one thread at a time.
    """

    def poll(self, max_records: int, timeout_secs: float) -> list[TopicRecord]:
        """Return up to ``max_records`` records, waiting at most ``timeout_secs`` for one.

        Also keeps this member in its group: call it at least once a session timeout.
        Records of one partition come in offset order. Partitions gained or lost by a
        rebalance are seen here; a gained partition is read from the group's committed
        offset (or from the consumer's ``start`` when there is none).

        Raises:
            BackendUnavailable: the server cannot be reached (retryable).
        """
        ...

    def commit(self, records: Sequence[TopicRecord]) -> None:
        """Commit, per partition, the offset after the highest record given; durable on return.

        Committed records are not delivered again to the group. Records of partitions this
        member no longer owns are skipped (logged): their new owner gets them again.

        Raises:
            BackendUnavailable: the server cannot be reached (retryable).
        """
        ...

    def seek(self, partition: int, offset: int) -> None:
        """Read ``partition`` from ``offset`` on (a replay); the partition must be owned.

        Raises:
            TopicError: this member does not own the partition.
        """
        ...

    def seek_to_time(self, timestamp_ms: int) -> None:
        """Read every owned partition from its first record appended at or after the time."""
        ...

    def assignment(self) -> list[int]:
        """Return the partitions this member owns, as of its last poll."""
        ...

    def close(self) -> None:
        """Leave the group; its partitions and their uncommitted records go to the others."""
        ...


class TopicLog(Protocol):
    """Durable, partitioned, append-only topics with consumer groups (at-least-once).

    A log may be shared by threads (a writer appends while workers poll consumers).
    """

    backend: str

    def ensure_topic(self, topic: str, partitions: int | None = None) -> None:
        """Create the topic unless it exists (idempotent); ``partitions`` defaults to the setting.

        An existing topic keeps its partition count and retention.
        """
        ...

    def append(self, topic: str, records: Sequence[KeyedValue]) -> list[tuple[int, int]]:
        """Append ``(key, value)`` records; once all are durable, return their (partition, offset).

        Raises:
            TopicNotFoundError: the topic was never created.
            RecordTooLargeError: a record is over ``max_record_bytes`` (nothing was sent).
            BackendUnavailable: the server cannot be reached (retryable; some records may
                already be stored, and a retry duplicates them).
        """
        ...

    def consumer(self, topic: str, group: str, *, start: Start = "earliest") -> TopicConsumer:
        """Join ``group`` as a new member reading ``topic``.

        ``start`` applies to partitions the group has never committed on: ``earliest`` reads
        every record still retained, ``latest`` only records appended after the partition
        is assigned.

        Raises:
            TopicNotFoundError: the topic was never created.
            BackendUnavailable: the server cannot be reached (retryable).
        """
        ...

    def retain(self, topic: str, before_ms: int | None = None) -> int:
        """Remove records appended before ``before_ms`` (default: the retention); return how many.

        Returns 0 without doing anything where the broker enforces retention itself.
        """
        ...

    def close(self) -> None:
        """Release connections; consumers opened from this log must be closed first."""
        ...


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it is a valid topic or group name, else raise TopicError."""
    if not _NAME.fullmatch(name):
        raise TopicError(f"Invalid {kind} name {name!r}: use 1-200 letters, digits, '_' or '-'.")
    return name


def partition_for_key(key: bytes, partitions: int) -> int:
    """Return the partition of a keyed record (stable across processes and backends)."""
    return zlib.crc32(key) % partitions


def place_records(records: Sequence[KeyedValue], partitions: int, turn: int) -> list[int]:
    """Return the partition of each record; keyless ones go to partition ``turn % partitions``."""
    keyless = turn % partitions
    return [keyless if key is None else zlib.crc32(key) % partitions for key, _ in records]


def check_record_sizes(records: Sequence[KeyedValue], max_bytes: int) -> None:
    """Raise RecordTooLargeError if a record's key and value pass ``max_bytes``."""
    for index, (key, value) in enumerate(records):
        size = len(value) + (len(key) if key is not None else 0)
        if size > max_bytes:
            raise RecordTooLargeError(
                f"Record {index} has {size} bytes, over topics.max_record_bytes={max_bytes}."
            )


def deal_partitions(members: Sequence[str], member: str, partitions: int) -> list[int]:
    """Return the partitions of ``member``: partitions dealt in turn to the sorted members."""
    ranked = sorted(set(members) | {member})
    rank, count = ranked.index(member), len(ranked)
    return [p for p in range(partitions) if p % count == rank]


def next_offsets(records: Sequence[TopicRecord]) -> dict[int, int]:
    """Return, per partition, the offset after the highest of ``records``."""
    after: dict[int, int] = {}
    for record in records:
        if record.offset + 1 > after.get(record.partition, -1):
            after[record.partition] = record.offset + 1
    return after
