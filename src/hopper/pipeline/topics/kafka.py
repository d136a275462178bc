"""KafkaTopicLog: topics on Kafka (or a Kafka-protocol broker) through confluent-kafka.

Appends go through one idempotent producer (``acks=all``) and are flushed before
``append`` returns: a delivery report for every record means every record is stored on
all in-sync replicas. Each record's partition is chosen here (``place_records``: CRC-32 of
the key), so the placement is the same as on the other backends.

Consumer groups are Kafka's own (the classic protocol, eager ``roundrobin`` assignment):
offsets are committed synchronously by ``commit`` and never automatically, so a record is
committed only after the caller has handled it; ``close`` leaves the group at once.

Topics are created by ``ensure_topic`` (AdminClient) with ``retention.ms`` and
``message.timestamp.type=LogAppendTime`` (broker time in ``timestamp_ms``); no client asks
the broker to create topics on the fly (``allow.auto.create.topics=false``). The broker
enforces retention, so ``retain`` does nothing.

Tansu 0.6 (the Kafka-protocol broker the tests run against), read in its code
(tansu-storage ``dynostore.rs``) and checked here:

- ListOffsets by timestamp answers with the first record *batch* stored after the time,
  and with offset 0 when there is none; ``seek_to_time`` therefore drops, client-side,
  the records of each partition older than the time until the first newer one.
- ListOffsets "latest" answers the newest batch's first offset + 1, not the end, so a new
  group with ``start="latest"`` starts one record into a batch: it re-reads or skips
  records (a real Kafka does not; the contract test marks this as an expected failure).
- Topic configs are kept (DescribeConfigs shows them) but not applied: records keep the
  producer's timestamps, and the memory engine never removes records.
- Group joins wait in steps of one second, up to half the session timeout, for other
  members, so a rebalance takes seconds.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from hopper.config import TopicSettings
from hopper.errors import BackendMissing, BackendUnavailable
from hopper.pipeline.topics.base import (
    KeyedValue,
    Start,
    TopicConsumer,
    TopicError,
    TopicLog,
    TopicNotFoundError,
    TopicRecord,
    check_name,
    check_record_sizes,
    next_offsets,
    place_records,
)

try:
    from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
    from confluent_kafka import TopicPartition as KafkaPartition
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise BackendMissing("kafka", extra="kafka", library="confluent-kafka") from exc

logger = logging.getLogger(__name__)
# librdkafka's own log lines (connection failures and the like), apart from Hopper's.
client_logger = logging.getLogger(__name__ + ".librdkafka")

# librdkafka's own (client-side) error codes start with "_"; they are its public API.
_ALL_BROKERS_DOWN = KafkaError._ALL_BROKERS_DOWN  # noqa: SLF001
_ASSIGNMENT_LOST = KafkaError._ASSIGNMENT_LOST  # noqa: SLF001
_STATE = KafkaError._STATE  # noqa: SLF001
_TRANSPORT = KafkaError._TRANSPORT  # noqa: SLF001
_UNKNOWN_TOPIC = KafkaError._UNKNOWN_TOPIC  # noqa: SLF001

_NOT_FOUND = (KafkaError.UNKNOWN_TOPIC_OR_PART, _UNKNOWN_TOPIC)
# Commit errors that mean "this member's generation is over": the records go to others.
_REBALANCED = (
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID,
    _ASSIGNMENT_LOST,
)


def _error_of(exc: KafkaException) -> KafkaError | None:
    first = exc.args[0] if exc.args else None
    return first if isinstance(first, KafkaError) else None


class KafkaTopicLog:
    """Topic log on a Kafka cluster; safe to share between threads."""

    backend = "kafka"

    def __init__(
        self,
        bootstrap: str,
        *,
        partitions: int = 4,
        retention_ms: int = 7 * 86_400_000,
        replication_factor: int = 1,
        session_timeout_ms: int = 10_000,
        request_timeout_secs: float = 10.0,
        max_record_bytes: int = 1_000_000,
    ) -> None:
        self.partitions = partitions
        self.retention_ms = retention_ms
        self.replication_factor = replication_factor
        self.session_timeout_ms = session_timeout_ms
        self.request_timeout_secs = request_timeout_secs
        self.max_record_bytes = max_record_bytes
        timeout_ms = int(request_timeout_secs * 1000)
        self.client_config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "allow.auto.create.topics": False,
            "socket.timeout.ms": max(timeout_ms, 10),
            "socket.connection.setup.timeout.ms": max(timeout_ms, 1000),
            "logger": client_logger,
            "error_cb": self._on_client_error,
        }
        self._admin = AdminClient(dict(self.client_config))
        self._lock = threading.Lock()  # one append at a time: flush waits for the whole queue
        self._producer: Producer | None = None
        self._producer_failed = False
        self._partition_counts: dict[str, int] = {}
        self._turn = 0
        self._closed = False

    @classmethod
    def from_settings(cls, settings: TopicSettings) -> KafkaTopicLog:
        """Make the log the settings name (no connection is made yet)."""
        return cls(
            settings.kafka_bootstrap,
            partitions=settings.partitions,
            retention_ms=settings.retention_secs * 1000,
            replication_factor=settings.kafka_replication_factor,
            session_timeout_ms=int(settings.session_timeout_secs * 1000),
            request_timeout_secs=settings.request_timeout_secs,
            max_record_bytes=settings.max_record_bytes,
        )

    def _on_client_error(self, error: KafkaError) -> None:
        if error.fatal():
            logger.error("Kafka client failed: %s.", error)
            self._producer_failed = True
        else:
            logger.debug("Kafka client error: %s.", error)

    def _check_open(self) -> None:
        if self._closed:
            raise TopicError("The topic log is closed.")

    def partition_count(self, topic: str) -> int:
        """Return the topic's partition count (cached), or raise TopicNotFoundError."""
        known = self._partition_counts.get(topic)
        if known is not None:
            return known
        check_name("topic", topic)
        try:
            metadata = self._admin.list_topics(topic, timeout=self.request_timeout_secs)
        except KafkaException as exc:
            raise BackendUnavailable(f"Kafka is unreachable: {_error_of(exc)}") from exc
        found = metadata.topics.get(topic)
        error = found.error if found is not None else None
        if found is None or (error is not None and error.code() in _NOT_FOUND):
            raise TopicNotFoundError(topic)
        if error is not None or not found.partitions:
            raise BackendUnavailable(f"Kafka has no usable metadata for topic {topic}: {error}")
        self._partition_counts[topic] = len(found.partitions)
        return len(found.partitions)

    def ensure_topic(self, topic: str, partitions: int | None = None) -> None:
        """Create the topic unless it exists (an existing one keeps its partitions)."""
        check_name("topic", topic)
        self._check_open()
        count = self.partitions if partitions is None else partitions
        if count <= 0:
            raise TopicError(f"A topic needs at least one partition, not {count}.")
        config = {"retention.ms": str(self.retention_ms), "message.timestamp.type": "LogAppendTime"}
        new = NewTopic(topic, count, self.replication_factor, config=config)
        futures = self._admin.create_topics(
            [new],
            request_timeout=self.request_timeout_secs,
            operation_timeout=self.request_timeout_secs,
        )
        try:
            futures[topic].result(timeout=self.request_timeout_secs + 1)
            logger.info("Created Kafka topic %s with %d partitions.", topic, count)
        except concurrent.futures.TimeoutError as exc:
            raise BackendUnavailable(f"Kafka did not create topic {topic} in time.") from exc
        except KafkaException as exc:
            error = _error_of(exc)
            if error is None or error.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                if error is not None and not error.retriable() and error.code() > 0:
                    raise TopicError(f"Kafka refused to create topic {topic}: {error}") from exc
                raise BackendUnavailable(f"Kafka could not create topic {topic}: {error}") from exc
        # On a cluster a new topic reaches every broker's metadata a little later.
        deadline = time.monotonic() + self.request_timeout_secs
        while True:
            try:
                existing = self.partition_count(topic)
                break
            except (TopicNotFoundError, BackendUnavailable):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        if partitions is not None and existing != count:
            logger.warning(
                "Topic %s exists with %d partitions, not %d: kept as it is.",
                topic,
                existing,
                count,
            )

    def _get_producer(self) -> Producer:
        if self._producer is not None and self._producer_failed:
            logger.warning("Replacing the Kafka producer after a fatal error.")
            self._producer.purge()
            self._producer.flush(0)
            self._producer = None
        if self._producer is None:
            self._producer_failed = False
            self._producer = Producer(
                {
                    **self.client_config,
                    "enable.idempotence": True,
                    "acks": "all",
                    # Every delivery report comes within this, so a flush is bounded.
                    "message.timeout.ms": max(int(self.request_timeout_secs * 1000), 10),
                    "message.max.bytes": max(self.max_record_bytes + 4096, 1_000_000),
                }
            )
        return self._producer

    @staticmethod
    def _delivered(
        placed: list[tuple[int, int] | None],
        failures: list[KafkaError],
        index: int,
        error: KafkaError | None,
        message: Message,
    ) -> None:
        if error is not None:
            failures.append(error)
            return
        partition, offset = message.partition(), message.offset()
        if partition is not None and offset is not None:
            placed[index] = (partition, offset)

    def append(self, topic: str, records: Sequence[KeyedValue]) -> list[tuple[int, int]]:
        """Append the records and flush; return (partition, offset) of each once all are acked."""
        if not records:
            return []
        check_record_sizes(records, self.max_record_bytes)
        with self._lock:
            self._check_open()
            partitions = self.partition_count(topic)
            placement = place_records(records, partitions, self._turn)
            self._turn += 1
            producer = self._get_producer()
            placed: list[tuple[int, int] | None] = [None] * len(records)
            failures: list[KafkaError] = []
            for index, ((key, value), p) in enumerate(zip(records, placement, strict=True)):
                report = partial(self._delivered, placed, failures, index)
                while True:
                    try:
                        producer.produce(topic, value, key, partition=p, on_delivery=report)
                        break
                    except BufferError:  # the local queue is full: let it drain
                        producer.poll(0.05)
                    except KafkaException as exc:
                        raise BackendUnavailable(
                            f"Kafka refused a record: {_error_of(exc)}"
                        ) from exc
            left = producer.flush(self.request_timeout_secs + 1)
            if left:
                producer.purge(in_queue=True, in_flight=False)
                producer.flush(0)
                raise BackendUnavailable(f"Kafka did not acknowledge {left} records in time.")
            if failures:
                self._raise_delivery_failure(topic, failures)
            if any(p is None for p in placed):
                raise BackendUnavailable("Kafka delivery reports are missing.")
            return [p for p in placed if p is not None]

    def _raise_delivery_failure(self, topic: str, failures: list[KafkaError]) -> None:
        error = failures[0]
        if error.code() in _NOT_FOUND:
            self._partition_counts.pop(topic, None)
            raise TopicNotFoundError(topic)
        if error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
            raise TopicError(f"Kafka refused a record as too large: {error}.")
        raise BackendUnavailable(f"Kafka did not store {len(failures)} records: {error}.")

    def consumer(self, topic: str, group: str, *, start: Start = "earliest") -> KafkaTopicConsumer:
        """Join ``group`` as a new member reading ``topic``."""
        check_name("group", group)
        self._check_open()
        self.partition_count(topic)  # a clear error for an unknown topic or a broker down
        return KafkaTopicConsumer(self, topic, group, start)

    def retain(self, topic: str, before_ms: int | None = None) -> int:
        """Do nothing: Kafka removes old records itself (``retention.ms`` of the topic)."""
        return 0

    def close(self) -> None:
        """Flush what the producer still holds."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._producer is not None:
                left = self._producer.flush(self.request_timeout_secs)
                if left:
                    logger.warning("Closing the Kafka producer with %d records unsent.", left)
                self._producer.close()
                self._producer = None


class KafkaTopicConsumer:
    """One member of a Kafka consumer group."""

    def __init__(self, log: KafkaTopicLog, topic: str, group: str, start: Start) -> None:
        self.topic = topic
        self.group = group
        self._log = log
        self._owned: list[int] = []
        # seek_to_time on Tansu lands before the time: records older than this are dropped.
        self._skip_before: dict[int, int] = {}
        self._brokers_down = False
        self._closed = False
        session_ms = log.session_timeout_ms
        self._consumer = Consumer(
            {
                **log.client_config,
                "error_cb": self._on_client_error,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": start,
                "enable.partition.eof": False,
                "partition.assignment.strategy": "roundrobin",
                "session.timeout.ms": session_ms,
                "heartbeat.interval.ms": max(session_ms // 4, 100),
                "max.poll.interval.ms": max(session_ms, 300_000),
            }
        )
        self._consumer.subscribe(
            [topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )

    def _on_client_error(self, error: KafkaError) -> None:
        if error.code() == _ALL_BROKERS_DOWN:
            self._brokers_down = True
        logger.debug("Kafka consumer error: %s.", error)

    def _on_assign(self, _consumer: Consumer, partitions: list[KafkaPartition]) -> None:
        self._owned = sorted(tp.partition for tp in partitions)
        logger.info(
            "Consumer of group %s on topic %s now owns partitions %s.",
            self.group,
            self.topic,
            self._owned,
        )

    def _on_revoke(self, _consumer: Consumer, partitions: list[KafkaPartition]) -> None:
        gone = {tp.partition for tp in partitions}
        self._owned = [p for p in self._owned if p not in gone]
        for p in gone:
            self._skip_before.pop(p, None)

    def _check_open(self) -> None:
        if self._closed:
            raise TopicError("The consumer is closed.")

    def poll(self, max_records: int, timeout_secs: float) -> list[TopicRecord]:
        """Return the records already fetched, or wait up to ``timeout_secs`` for one."""
        self._check_open()
        if max_records <= 0:
            return []
        consumer = self._consumer
        # consume() waits for a full batch; take what is there, else wait for a first one.
        messages = consumer.consume(max_records, 0)
        if not messages and timeout_secs > 0:
            first = consumer.poll(timeout_secs)
            if first is not None:
                messages = [first]
                if max_records > 1:
                    messages += consumer.consume(max_records - 1, 0)
        records = []
        for message in messages:
            error = message.error()
            if error is not None:
                self._handle_message_error(error)
                continue
            partition, offset = message.partition(), message.offset()
            if partition is None or offset is None:
                continue
            timestamp_ms = message.timestamp()[1]
            skip = self._skip_before.get(partition)
            if skip is not None:
                if timestamp_ms < skip:
                    continue
                del self._skip_before[partition]
            value = message.value()
            records.append(
                TopicRecord(
                    self.topic, partition, offset, message.key(), value or b"", timestamp_ms
                )
            )
        if records:
            self._brokers_down = False
        elif self._brokers_down:
            self._brokers_down = False
            raise BackendUnavailable("Kafka is unreachable: all brokers are down.")
        return records

    def _handle_message_error(self, error: KafkaError) -> None:
        if error.code() in _NOT_FOUND:
            raise TopicNotFoundError(self.topic)
        if error.code() in (_TRANSPORT, _ALL_BROKERS_DOWN):
            raise BackendUnavailable(f"Kafka is unreachable: {error}.")
        logger.warning("Kafka consumer of topic %s got an error: %s.", self.topic, error)

    def commit(self, records: Sequence[TopicRecord]) -> None:
        """Commit synchronously, per owned partition, the offset after the highest record."""
        self._check_open()
        after = next_offsets(records)
        if not after:
            return
        owned = set(self._owned)  # kept by the rebalance callbacks
        offsets = [KafkaPartition(self.topic, p, o) for p, o in sorted(after.items()) if p in owned]
        skipped = sorted(p for p in after if p not in owned)
        if offsets:
            try:
                results = self._consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                error = _error_of(exc)
                if error is None or error.code() not in _REBALANCED:
                    raise BackendUnavailable(f"Kafka commit failed: {error}") from exc
                skipped = sorted(after)
            else:
                skipped += [tp.partition for tp in results if tp.error is not None]
        if skipped:
            logger.warning(
                "Consumer of group %s no longer owns partitions %s of topic %s: their "
                "offsets were not committed, and the records go to the new owner.",
                self.group,
                skipped,
                self.topic,
            )

    def seek(self, partition: int, offset: int) -> None:
        """Read ``partition`` from ``offset`` on, at the next poll."""
        self._check_open()
        if partition not in self.assignment():
            raise TopicError(
                f"Partition {partition} of topic {self.topic} is not owned by this consumer "
                f"(it owns {self.assignment()}): poll first, or seek an owned one."
            )
        self._skip_before.pop(partition, None)
        self._seek(KafkaPartition(self.topic, partition, max(0, offset)))

    def _seek(self, target: KafkaPartition) -> None:
        # A partition just assigned may not be fetching yet (_STATE): wait for it briefly.
        deadline = time.monotonic() + self._log.request_timeout_secs
        while True:
            try:
                self._consumer.seek(target)
                return
            except KafkaException as exc:
                error = _error_of(exc)
                if error is None or error.code() != _STATE:
                    raise BackendUnavailable(f"Kafka seek failed: {error}") from exc
                if time.monotonic() > deadline:
                    raise BackendUnavailable(f"Kafka seek failed: {error}") from exc
                time.sleep(0.05)

    def seek_to_time(self, timestamp_ms: int) -> None:
        """Read every owned partition from its first record at or after the time."""
        self._check_open()
        owned = self.assignment()
        if not owned:
            return
        timeout = self._log.request_timeout_secs
        asked = [KafkaPartition(self.topic, p, timestamp_ms) for p in owned]
        try:
            found = self._consumer.offsets_for_times(asked, timeout)
            for tp in found:
                offset = tp.offset
                if offset < 0:  # no record that new: the end
                    offset = self._consumer.get_watermark_offsets(
                        KafkaPartition(self.topic, tp.partition), timeout
                    )[1]
                self._seek(KafkaPartition(self.topic, tp.partition, offset))
                self._skip_before[tp.partition] = timestamp_ms
        except KafkaException as exc:
            raise BackendUnavailable(f"Kafka seek by time failed: {_error_of(exc)}") from exc

    def assignment(self) -> list[int]:
        """Return the partitions assigned to this member at its last poll."""
        if self._closed:
            return []
        return sorted(tp.partition for tp in self._consumer.assignment())

    def close(self) -> None:
        """Leave the group at once (no commit): the others get its partitions."""
        if self._closed:
            return
        self._closed = True
        try:
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            logger.warning("Closing the Kafka consumer of %s failed: %s.", self.topic, exc)


if TYPE_CHECKING:  # mypy checks that the backend keeps the interface

    def _is_topic_log(
        log: KafkaTopicLog, consumer: KafkaTopicConsumer
    ) -> tuple[TopicLog, TopicConsumer]:
        return log, consumer
