"""NatsTopicLog: topics on NATS JetStream (nats-py), one stream per topic.

**Layout.** Topic ``T`` is the stream ``<prefix>_T`` (file storage, ``max_age`` = the
retention, old records discarded first) with one subject per partition,
``<prefix>.T.<partition>``; the stream's subject list is the partition count. An offset is
the stream sequence: it increases within a partition but is not contiguous (the
partitions share the sequence), so the position after a record is ``offset + 1``. The
value is the message payload, byte for byte; the key travels in the ``Hopper-Key`` header
(base64). ``timestamp_ms`` is the server's time of storing. An append publishes every
record without waiting (``publish_async``) and returns once JetStream has acknowledged
each: the message is then in the stream's file (written, not fsynced: it survives a crash
of the server process, as SQLite's ``synchronous=NORMAL`` does).

**Consumer groups.** JetStream has no partition assignment of its own, so Hopper keeps
one, in two key-value buckets:

- ``<prefix>_groups`` (TTL = the session timeout): a member key ``T.G.m.<member>``
  written at each heartbeat, and a lease ``T.G.p.<partition>`` naming the partition's
  owner, taken, renewed and released with compare-and-set on its revision. A member that
  stops polling loses both when the TTL passes; nobody else can take a lease before.
- ``<prefix>_offsets`` (no TTL): the committed offset ``T.G.<partition>``.

A member lists the live members (one stream-info request), deals the partitions in turn
to them sorted by id, releases the leases it should not hold and takes the free ones it
should. A partition changes hands only through its lease (released, or expired), so two
live members never read it at once. ``commit`` checks the lease (renewing it when it is
older than half the session) and then writes the offsets; the bucket's ack means they
are stored.

Each owned partition is read through an ephemeral pull consumer (no acks, in memory,
filtered to the partition's subject) that starts at the member's position: the committed
offset when the partition is gained, where ``seek`` or ``seek_to_time`` say later. One
pull request per partition is kept outstanding; the records it brings are buffered and
handed out by ``poll``. A gap in the consumer sequence (messages lost on the way) or a
pull that never ends restarts the consumer after the last buffered record.

Why not durable JetStream consumers acknowledged by ``commit``: the records a crashed
member had fetched without acking come back only after ``ack_wait``, and then after
newer ones (out of order); replay needs the consumer recreated anyway; and the group's
progress would be spread over groups x partitions durable consumers. With the committed
offsets in a bucket, a partition's new owner reads every uncommitted record at once and
in order, which is what Kafka gives, and both survive a crash equally (file storage).

nats-py is asyncio; this interface is synchronous (a writer thread appends, workers
poll), so each log runs a private event loop in a daemon thread and every call is
bridged with ``asyncio.run_coroutine_threadsafe``.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import datetime
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from hopper.config import TopicSettings
from hopper.errors import BackendMissing, BackendUnavailable, HopperError
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
    deal_partitions,
    next_offsets,
    place_records,
)

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription
    from nats.js import JetStreamContext, api
    from nats.js.kv import KeyValue
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise BackendMissing("nats", extra="nats", library="nats-py") from exc

logger = logging.getLogger(__name__)

T = TypeVar("T")

KEY_HEADER = "Hopper-Key"
# Records asked for by one pull request, and how long the server holds the request.
PULL_BATCH = 512
PULL_EXPIRES_SECS = 5.0
# A pull request not ended by then (no records, no timeout status) is presumed lost.
PULL_LOST_SECS = PULL_EXPIRES_SECS + 3.0
# How often a member that waits for a partition to be released looks again.
TAKEOVER_RETRY_SECS = 0.2
# Server errors that are not worth retrying; every other one is BackendUnavailable.
_STREAM_NOT_FOUND = 10059

_Server = (nats.errors.Error, OSError, asyncio.TimeoutError)


def _describe(exc: BaseException) -> str:
    """Say what went wrong without the URL (it may hold credentials)."""
    text = str(exc) or type(exc).__name__
    return text.removeprefix("nats: ")


def _encode_key(key: bytes) -> str:
    # A leading "k" keeps the header non-empty for an empty key.
    return "k" + base64.b64encode(key).decode()


def _decode_key(headers: dict[str, str] | None) -> bytes | None:
    if not headers:
        return None
    value = headers.get(KEY_HEADER)
    return None if value is None else base64.b64decode(value[1:])


def _reply_metadata(reply: str) -> tuple[str, int, int, int] | None:
    """Return (consumer, stream sequence, consumer sequence, ns) from a JetStream reply."""
    tokens = reply.split(".")
    if len(tokens) < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    base = 2 if len(tokens) == 9 else 4  # v2 replies add domain and account hash
    return (
        tokens[base + 1],
        int(tokens[base + 3]),
        int(tokens[base + 4]),
        int(tokens[base + 5]),
    )


def _utc(timestamp_ms: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(timestamp_ms / 1000, tz=datetime.UTC)


class _Bridge:
    """A private asyncio loop in a daemon thread, called from other threads."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float, what: str) -> T:
        """Run ``coro`` on the loop and wait for it; server trouble is BackendUnavailable."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise BackendUnavailable(f"NATS: {what} got no answer in {timeout:.1f} s.") from exc
        except HopperError:
            raise
        except _Server as exc:
            raise BackendUnavailable(f"NATS: {what} failed: {_describe(exc)}.") from exc

    def soon(self, callback: Any, *args: Any) -> None:
        """Run a plain callback on the loop, without waiting."""
        self.loop.call_soon_threadsafe(callback, *args)

    def stop(self) -> None:
        """Stop the loop and its thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


class NatsTopicLog:
    """Topic log on a NATS server with JetStream; safe to share between threads."""

    backend = "nats"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "hopper",
        partitions: int = 4,
        retention_secs: int = 7 * 86_400,
        replicas: int = 1,
        session_timeout_secs: float = 10.0,
        request_timeout_secs: float = 10.0,
        max_record_bytes: int = 1_000_000,
    ) -> None:
        self.prefix = prefix
        self.partitions = partitions
        self.retention_secs = retention_secs
        self.replicas = replicas
        self.session_timeout_secs = session_timeout_secs
        self.lease_ttl_secs = session_timeout_secs  # the groups bucket's TTL once bound
        self.request_timeout_secs = request_timeout_secs
        self.max_record_bytes = max_record_bytes
        self._url = url
        self.bridge = _Bridge(f"hopper-nats-{prefix}")
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._connecting: asyncio.Lock | None = None
        self._buckets: tuple[KeyValue, KeyValue] | None = None
        self._partition_counts: dict[str, int] = {}
        self._turn = 0
        self._closing = False
        self._closed = False

    @classmethod
    def from_settings(cls, settings: TopicSettings) -> NatsTopicLog:
        """Make the log the settings name (it connects at its first call)."""
        return cls(
            settings.nats_url.get_secret_value(),
            prefix=settings.nats_prefix,
            partitions=settings.partitions,
            retention_secs=settings.retention_secs,
            replicas=settings.nats_replicas,
            session_timeout_secs=settings.session_timeout_secs,
            request_timeout_secs=settings.request_timeout_secs,
            max_record_bytes=settings.max_record_bytes,
        )

    # Names -------------------------------------------------------------------------

    def stream_name(self, topic: str) -> str:
        """Return the JetStream stream of ``topic``."""
        return f"{self.prefix}_{topic}"

    def subject(self, topic: str, partition: int) -> str:
        """Return the subject of one partition of ``topic``."""
        return f"{self.prefix}.{topic}.{partition}"

    @property
    def groups_bucket(self) -> str:
        """Return the name of the bucket of members and leases."""
        return f"{self.prefix}_groups"

    @property
    def offsets_bucket(self) -> str:
        """Return the name of the bucket of committed offsets."""
        return f"{self.prefix}_offsets"

    # Connection --------------------------------------------------------------------

    def call(self, coro: Coroutine[Any, Any, T], what: str, *, requests: int = 1) -> T:
        """Run a coroutine of ``requests`` server round trips on the log's loop."""
        if self._closed:
            coro.close()
            raise TopicError("The topic log is closed.")
        return self.bridge.call(coro, self.request_timeout_secs * requests + 1, what)

    async def jetstream(self) -> JetStreamContext:
        """Return the JetStream context, connecting first if needed."""
        if self._js is not None:
            return self._js
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._js is None:
                client = Client()
                try:
                    # Retry forever once connected; the first connection waits a timeout.
                    await asyncio.wait_for(
                        client.connect(
                            self._url,
                            name="hopper",
                            connect_timeout=max(1, int(self.request_timeout_secs)),
                            allow_reconnect=True,
                            max_reconnect_attempts=-1,
                            reconnect_time_wait=1,
                            error_cb=self._on_error,
                            disconnected_cb=self._on_disconnected,
                            reconnected_cb=self._on_reconnected,
                        ),
                        self.request_timeout_secs,
                    )
                except BaseException as exc:
                    await client.close()
                    if isinstance(exc, asyncio.TimeoutError):
                        raise BackendUnavailable(
                            "NATS is unreachable (connect timed out)."
                        ) from exc
                    raise
                self._nc = client
                self._js = client.jetstream(timeout=self.request_timeout_secs)
        assert self._js is not None
        return self._js

    async def client(self) -> Client:
        """Return the connected NATS client."""
        await self.jetstream()
        assert self._nc is not None
        return self._nc

    async def _on_error(self, exc: Exception) -> None:
        logger.debug("NATS client error: %s.", _describe(exc))

    async def _on_disconnected(self) -> None:
        if not self._closing:
            logger.warning("Disconnected from NATS; reconnecting.")

    async def _on_reconnected(self) -> None:
        logger.info("Reconnected to NATS.")

    async def buckets(self) -> tuple[KeyValue, KeyValue]:
        """Return the (groups, offsets) buckets, creating them if needed."""
        if self._buckets is None:
            groups = await self._bucket(self.groups_bucket, ttl=self.session_timeout_secs)
            ttl = (await groups.status()).ttl
            if ttl and abs(ttl - self.lease_ttl_secs) > 0.001:
                # Made by a process with another session timeout: leases live that long.
                logger.warning(
                    "NATS bucket %s keeps leases %.1f s, not topics.session_timeout_secs "
                    "= %.1f s: using %.1f s.",
                    self.groups_bucket,
                    ttl,
                    self.session_timeout_secs,
                    ttl,
                )
                self.lease_ttl_secs = ttl
            offsets = await self._bucket(self.offsets_bucket, ttl=None)
            self._buckets = (groups, offsets)
        return self._buckets

    async def _bucket(self, name: str, ttl: float | None) -> KeyValue:
        js = await self.jetstream()
        try:
            return await js.key_value(name)
        except nats.js.errors.NotFoundError:
            pass
        config = api.KeyValueConfig(
            bucket=name, history=1, ttl=ttl, storage=api.StorageType.FILE, replicas=self.replicas
        )
        try:
            return await js.create_key_value(config)
        except nats.js.errors.BadRequestError:  # made meanwhile by another process
            return await js.key_value(name)

    # Topics ------------------------------------------------------------------------

    async def partition_count(self, topic: str) -> int:
        """Return the topic's partition count (cached), or raise TopicNotFoundError."""
        known = self._partition_counts.get(topic)
        if known is not None:
            return known
        check_name("topic", topic)
        js = await self.jetstream()
        try:
            info = await js.stream_info(self.stream_name(topic))
        except nats.js.errors.NotFoundError as exc:
            raise TopicNotFoundError(topic) from exc
        count = len(info.config.subjects or [])
        if count == 0:
            raise TopicError(f"Stream {self.stream_name(topic)} has no subjects.")
        self._partition_counts[topic] = count
        return count

    def ensure_topic(self, topic: str, partitions: int | None = None) -> None:
        """Create the topic's stream unless it exists (an existing one keeps its partitions)."""
        check_name("topic", topic)
        count = self.partitions if partitions is None else partitions
        if count <= 0:
            raise TopicError(f"A topic needs at least one partition, not {count}.")
        existing = self.call(self._ensure_topic(topic, count), "creating a topic", requests=3)
        if partitions is not None and existing != count:
            logger.warning(
                "Topic %s exists with %d partitions, not %d: kept as it is.",
                topic,
                existing,
                count,
            )

    async def _ensure_topic(self, topic: str, count: int) -> int:
        try:
            return await self.partition_count(topic)
        except TopicNotFoundError:
            pass
        js = await self.jetstream()
        config = api.StreamConfig(
            name=self.stream_name(topic),
            subjects=[self.subject(topic, p) for p in range(count)],
            retention=api.RetentionPolicy.LIMITS,
            max_age=float(self.retention_secs),
            storage=api.StorageType.FILE,
            discard=api.DiscardPolicy.OLD,
            num_replicas=self.replicas,
        )
        try:
            await js.add_stream(config)
            logger.info("Created NATS stream for topic %s with %d partitions.", topic, count)
        except nats.js.errors.BadRequestError:  # made meanwhile by another process
            pass
        return await self.partition_count(topic)

    def append(self, topic: str, records: Sequence[KeyedValue]) -> list[tuple[int, int]]:
        """Publish the records; return (partition, offset) of each once JetStream acked all."""
        if not records:
            return []
        check_record_sizes(records, self.max_record_bytes)
        turn = self._turn
        self._turn += 1
        return self.call(self._append(topic, records, turn), "append", requests=2)

    async def _append(
        self, topic: str, records: Sequence[KeyedValue], turn: int
    ) -> list[tuple[int, int]]:
        js = await self.jetstream()
        partitions = await self.partition_count(topic)
        placement = place_records(records, partitions, turn)
        subjects = [self.subject(topic, p) for p in range(partitions)]
        futures: list[asyncio.Future[api.PubAck]] = []
        try:
            for (key, value), p in zip(records, placement, strict=True):
                headers = None if key is None else {KEY_HEADER: _encode_key(key)}
                # No wait_stall: it costs a task a record; the whole call has a timeout.
                futures.append(await js.publish_async(subjects[p], value, headers=headers))
            acks = await asyncio.wait_for(asyncio.gather(*futures), self.request_timeout_secs)
        except nats.js.errors.NoStreamResponseError as exc:
            self._partition_counts.pop(topic, None)
            await self.partition_count(topic)  # TopicNotFoundError if the stream is gone
            raise BackendUnavailable("NATS JetStream did not answer an append.") from exc
        finally:
            for future in futures:
                if not future.done():
                    future.cancel()
        return [(p, ack.seq) for p, ack in zip(placement, acks, strict=True)]

    def consumer(self, topic: str, group: str, *, start: Start = "earliest") -> NatsTopicConsumer:
        """Join ``group`` as a new member reading ``topic``."""
        check_name("group", group)
        partitions = self.call(self.partition_count(topic), "reading a topic")
        consumer = NatsTopicConsumer(self, topic, group, partitions, start)
        self.call(consumer.open(), "joining a group", requests=3)
        return consumer

    def retain(self, topic: str, before_ms: int | None = None) -> int:
        """Do nothing: JetStream removes old records itself (the stream's ``max_age``)."""
        return 0

    def close(self) -> None:
        """Close the connection and stop the log's loop."""
        if self._closed:
            return
        try:
            self.call(self._close(), "closing")
        except HopperError as exc:
            logger.warning("Closing the NATS connection failed: %s.", exc)
        finally:
            self._closed = True
            self.bridge.stop()

    async def _close(self) -> None:
        self._closing = True
        if self._nc is not None:
            await self._nc.close()


@dataclass
class _Feed:
    """Loop-side state of one owned partition's ephemeral pull consumer."""

    partition: int
    generation: int
    consumer: str | None = None
    next_consumer_seq: int = 1
    last_seq: int | None = None  # stream sequence of the last record buffered
    is_pulling: bool = False
    pull_left: int = 0
    pull_deadline: float = 0.0
    records: deque[TopicRecord] = field(default_factory=deque)


@dataclass
class _Lease:
    revision: int
    renewed_at: float  # monotonic time at which the renewal was sent


class NatsTopicConsumer:
    """One member of a consumer group on NATS JetStream (see the module docstring)."""

    def __init__(
        self, log: NatsTopicLog, topic: str, group: str, partitions: int, start: Start
    ) -> None:
        self.topic = topic
        self.group = group
        self.member_id = uuid.uuid4().hex
        self._log = log
        self._partitions = partitions
        self._start = start
        self._stream = log.stream_name(topic)
        self._inbox = ""
        self._subscription: Subscription | None = None
        self._leases: dict[int, _Lease] = {}
        self._feeds: dict[int, _Feed] = {}  # touched on the loop only, but records (locked)
        self._by_consumer: dict[str, _Feed] = {}  # the same feeds by JetStream consumer name
        self._generation = 0
        self._cond = threading.Condition()
        self._next_refresh = 0.0
        self._turn = 0
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._key = f"{topic}.{group}"

    # Loop side ---------------------------------------------------------------------

    async def open(self) -> None:
        """Subscribe to this member's inbox (pull requests are answered there)."""
        client = await self._log.client()
        await self._log.buckets()
        self._inbox = client.new_inbox()
        self._subscription = await client.subscribe(self._inbox + ".*.*", cb=self._on_message)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task of its own, kept referenced until done (on the loop)."""
        task = self._log.bridge.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _member_key(self, member: str) -> str:
        return f"{self._key}.m.{member}"

    def _lease_key(self, partition: int) -> str:
        return f"{self._key}.p.{partition}"

    def _offset_key(self, partition: int) -> str:
        return f"{self._key}.{partition}"

    async def _members(self) -> list[str]:
        js = await self._log.jetstream()
        bucket = self._log.groups_bucket
        prefix = f"$KV.{bucket}.{self._key}.m."
        info = await js.stream_info(f"KV_{bucket}", subjects_filter=prefix + "*")
        return [s.removeprefix(prefix) for s in (info.state.subjects or {})]

    async def refresh(self) -> None:
        """Heartbeat, then give up and take leases to match the group's assignment."""
        groups, _ = await self._log.buckets()
        await groups.put(self._member_key(self.member_id), b"")
        members = await self._members()
        target = deal_partitions(members, self.member_id, self._partitions)
        for p in [p for p in self._leases if p not in target]:
            await self._release(p)
        for p in [p for p in self._leases if p in target]:
            await self._renew(p)
        waiting = False
        for p in target:
            if p not in self._leases:
                sent = time.monotonic()
                try:
                    revision = await groups.create(self._lease_key(p), self.member_id.encode())
                except nats.js.errors.KeyWrongLastSequenceError:
                    waiting = True  # still held by its previous owner
                    continue
                self._leases[p] = _Lease(revision, sent)
        for p in list(self._leases):
            if p not in self._feeds:
                await self._start_feed(p, await self._start_position(p))
        self._next_refresh = time.monotonic() + (
            TAKEOVER_RETRY_SECS if waiting else self._log.lease_ttl_secs / 3
        )
        self._check_pulls()

    async def _renew(self, partition: int) -> bool:
        groups, _ = await self._log.buckets()
        lease = self._leases[partition]
        sent = time.monotonic()
        try:
            lease.revision = await groups.update(
                self._lease_key(partition), self.member_id.encode(), last=lease.revision
            )
        except nats.js.errors.KeyWrongLastSequenceError:
            logger.warning(
                "Consumer %s of group %s lost partition %d of topic %s (its lease expired).",
                self.member_id[:8],
                self.group,
                partition,
                self.topic,
            )
            del self._leases[partition]
            self._stop_feed(partition)
            return False
        lease.renewed_at = sent
        return True

    async def _release(self, partition: int) -> None:
        groups, _ = await self._log.buckets()
        lease = self._leases.pop(partition)
        self._stop_feed(partition)
        try:
            await groups.delete(self._lease_key(partition), last=lease.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            pass  # expired and taken meanwhile: nothing of ours to release

    async def _start_position(self, partition: int) -> api.ConsumerConfig:
        _, offsets = await self._log.buckets()
        try:
            entry = await offsets.get(self._offset_key(partition))
        except nats.js.errors.KeyNotFoundError:
            entry = None
        if entry is not None and entry.value:
            return self._from_sequence(int(entry.value))
        if self._start == "latest":
            js = await self._log.jetstream()
            info = await js.stream_info(self._stream)
            return self._from_sequence(info.state.last_seq + 1)
        return api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL)

    @staticmethod
    def _from_sequence(sequence: int) -> api.ConsumerConfig:
        if sequence <= 1:
            return api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL)
        return api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=sequence
        )

    async def _start_feed(
        self, partition: int, start: api.ConsumerConfig, keep: Sequence[TopicRecord] = ()
    ) -> None:
        """(Re)create the partition's pull consumer at ``start``, buffering only ``keep``."""
        self._stop_feed(partition)
        self._generation += 1
        feed = _Feed(partition, self._generation)
        if keep:
            feed.records.extend(keep)
            feed.last_seq = keep[-1].offset
        with self._cond:
            self._feeds[partition] = feed
        js = await self._log.jetstream()
        config = start.evolve(
            ack_policy=api.AckPolicy.NONE,
            filter_subject=self._log.subject(self.topic, partition),
            inactive_threshold=max(60.0, 3 * self._log.session_timeout_secs),
            mem_storage=True,
            num_replicas=1,
        )
        try:
            info = await js.add_consumer(self._stream, config)
        except BaseException as exc:
            with self._cond:
                if self._feeds.get(partition) is feed:
                    del self._feeds[partition]
            if isinstance(exc, nats.js.errors.NotFoundError):
                raise TopicNotFoundError(self.topic) from exc
            raise
        feed.consumer = info.name
        if self._feeds.get(partition) is not feed:  # replaced or stopped meanwhile
            self._spawn(self._delete_consumer(info.name))
            return
        self._by_consumer[info.name] = feed
        await self._pull(feed)

    def _stop_feed(self, partition: int) -> None:
        with self._cond:
            feed = self._feeds.pop(partition, None)
        if feed is not None and feed.consumer is not None:
            self._by_consumer.pop(feed.consumer, None)
            self._spawn(self._delete_consumer(feed.consumer))

    async def _delete_consumer(self, name: str) -> None:
        js = await self._log.jetstream()
        try:
            await js.delete_consumer(self._stream, name)
        except _Server as exc:  # its inactivity threshold removes it anyway
            logger.debug("Deleting NATS consumer %s failed: %s.", name, _describe(exc))

    async def _pull(self, feed: _Feed) -> None:
        if feed.consumer is None or feed.is_pulling:
            return
        client = await self._log.client()
        request = {"batch": PULL_BATCH, "expires": int(PULL_EXPIRES_SECS * 1e9)}
        feed.is_pulling = True
        feed.pull_left = PULL_BATCH
        feed.pull_deadline = time.monotonic() + PULL_LOST_SECS
        await client.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{feed.consumer}",
            json.dumps(request).encode(),
            reply=f"{self._inbox}.{feed.partition}.{feed.generation}",
        )

    def _top_up(self) -> None:
        """Ask for more records for each partition whose buffer runs low (on the loop)."""
        for feed in list(self._feeds.values()):
            if not feed.is_pulling and len(feed.records) < PULL_BATCH:
                self._spawn(self._pull(feed))

    def _check_pulls(self) -> None:
        now = time.monotonic()
        for feed in list(self._feeds.values()):
            if feed.is_pulling and now > feed.pull_deadline:
                logger.info("A NATS pull on topic %s got lost; restarting it.", self.topic)
                self._restart_feed(feed)
        self._top_up()

    def _restart_feed(self, feed: _Feed) -> None:
        """Restart a feed after its last buffered record (a gap, a lost pull)."""
        if self._feeds.get(feed.partition) is not feed:
            return
        feed.generation = -1  # ignore what still arrives for it
        with self._cond:
            keep = list(feed.records)
        start = None if feed.last_seq is None else self._from_sequence(feed.last_seq + 1)
        self._spawn(self._restart(feed.partition, start, keep))

    async def _restart(
        self, partition: int, start: api.ConsumerConfig | None, keep: list[TopicRecord]
    ) -> None:
        try:
            if start is None:
                start = await self._start_position(partition)
            if partition in self._leases:
                await self._start_feed(partition, start, keep)
        except (HopperError, *_Server) as exc:
            # The next refresh starts it again from the committed offset.
            self._stop_feed(partition)
            logger.warning("Restarting the NATS reader of topic %s failed: %s.", self.topic, exc)

    async def _on_message(self, msg: Msg) -> None:
        headers = msg.headers
        status = headers.get("Status") if headers else None
        if status:
            # Status messages come on the pull's own reply subject: <inbox>.<partition>.<gen>.
            partition_text, _, generation_text = msg.subject.rpartition(".")
            feed = self._feeds.get(int(partition_text.rpartition(".")[2]))
            if feed is None or feed.generation != int(generation_text) or status == "100":
                return  # for a reader given up since, or an idle heartbeat
            feed.is_pulling = False
            if status in ("404", "408") or (status == "409" and "Leadership" in str(headers)):
                self._top_up()
            else:  # the consumer is gone or refuses pulls: make a new one
                logger.info("NATS pull on topic %s ended with status %s.", self.topic, status)
                self._restart_feed(feed)
            return
        # Records keep their own subject; the reply names the consumer and the sequences.
        metadata = _reply_metadata(msg.reply)
        if metadata is None:
            return
        consumer, sequence, consumer_sequence, timestamp_ns = metadata
        feed = self._by_consumer.get(consumer)
        if feed is None or feed.generation < 0:
            return  # for a reader given up since
        if consumer_sequence != feed.next_consumer_seq:
            logger.info("NATS records of topic %s were lost on the way; re-reading.", self.topic)
            self._restart_feed(feed)
            return
        feed.next_consumer_seq += 1
        feed.last_seq = sequence
        record = TopicRecord(
            self.topic,
            feed.partition,
            sequence,
            _decode_key(headers),
            msg.data,
            timestamp_ns // 1_000_000,
        )
        with self._cond:
            feed.records.append(record)
            self._cond.notify_all()
        feed.pull_left -= 1
        if feed.pull_left <= 0:
            feed.is_pulling = False
            self._top_up()

    async def commit_offsets(self, after: dict[int, int]) -> list[int]:
        """Write the offsets of the partitions still leased; return those skipped."""
        _, offsets = await self._log.buckets()
        skipped = []
        writes = []
        for p, offset in sorted(after.items()):
            lease = self._leases.get(p)
            if lease is not None and time.monotonic() - lease.renewed_at > (
                self._log.lease_ttl_secs / 2
            ):
                if not await self._renew(p):
                    lease = None
            if lease is None:
                skipped.append(p)
            else:
                writes.append(offsets.put(self._offset_key(p), str(offset).encode()))
        await asyncio.gather(*writes)
        return skipped

    async def seek_feeds(self, starts: dict[int, api.ConsumerConfig]) -> None:
        """Restart the given partitions' feeds at new positions."""
        for p, start in starts.items():
            await self._start_feed(p, start)

    async def leave(self) -> None:
        """Release every lease, forget this member, stop reading."""
        for p in list(self._leases):
            await self._release(p)
        js = await self._log.jetstream()
        bucket = self._log.groups_bucket
        # A purge leaves no marker: the member is gone from the others' next listing.
        await js.purge_stream(
            f"KV_{bucket}", subject=f"$KV.{bucket}.{self._member_key(self.member_id)}"
        )
        if self._subscription is not None:
            await self._subscription.unsubscribe()
        # Wait for the consumer deletions and pulls still under way.
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # Caller side -------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise TopicError("The consumer is closed.")

    def _take(self, max_records: int) -> list[TopicRecord]:
        records: list[TopicRecord] = []
        feeds = list(self._feeds.values())
        if not feeds:
            return records
        self._turn += 1
        for i in range(len(feeds)):
            queue = feeds[(self._turn + i) % len(feeds)].records
            while queue and len(records) < max_records:
                records.append(queue.popleft())
        return records

    def poll(self, max_records: int, timeout_secs: float) -> list[TopicRecord]:
        """Return buffered records, or wait up to ``timeout_secs`` for some."""
        self._check_open()
        deadline = time.monotonic() + timeout_secs
        while True:
            if time.monotonic() >= self._next_refresh:
                self._log.call(self.refresh(), "group heartbeat", requests=4 + 3 * self._partitions)
            with self._cond:
                records = self._take(max(0, max_records))
                now = time.monotonic()
                if not records and now < deadline and max_records > 0:
                    self._cond.wait(max(0.0, min(deadline, self._next_refresh) - now))
                    records = self._take(max_records)
            if records:
                self._log.bridge.soon(self._top_up)
                return records
            if time.monotonic() >= deadline or max_records <= 0:
                return records

    def commit(self, records: Sequence[TopicRecord]) -> None:
        """Commit, per partition still leased, the offset after the highest record."""
        self._check_open()
        after = next_offsets(records)
        if not after:
            return
        skipped = self._log.call(self.commit_offsets(after), "commit", requests=2)
        if skipped:
            logger.warning(
                "Consumer %s of group %s no longer owns partitions %s of topic %s: their "
                "offsets were not committed, and the records go to the new owner.",
                self.member_id[:8],
                self.group,
                skipped,
                self.topic,
            )

    def seek(self, partition: int, offset: int) -> None:
        """Read ``partition`` from ``offset`` on, at the next poll."""
        self._check_open()
        if partition not in self._leases:
            raise TopicError(
                f"Partition {partition} of topic {self.topic} is not owned by this consumer "
                f"(it owns {self.assignment()}): poll first, or seek an owned one."
            )
        self._log.call(self.seek_feeds({partition: self._from_sequence(offset)}), "seek")

    def seek_to_time(self, timestamp_ms: int) -> None:
        """Read every owned partition from its first record stored at or after the time."""
        self._check_open()
        start = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_TIME, opt_start_time=_utc(timestamp_ms)
        )
        owned = self.assignment()
        self._log.call(
            self.seek_feeds(dict.fromkeys(owned, start)), "seek", requests=max(1, len(owned))
        )

    def assignment(self) -> list[int]:
        """Return the partitions this member holds the leases of."""
        return sorted(self._leases)

    def close(self) -> None:
        """Leave the group: release the leases so that the others take over at once."""
        if self._closed:
            return
        self._closed = True
        try:
            self._log.call(self.leave(), "leaving a group", requests=2 + len(self._leases))
        except HopperError as exc:
            # The others take over when the leases expire instead.
            logger.warning("Consumer %s could not leave its group: %s.", self.member_id, exc)


if TYPE_CHECKING:  # mypy checks that the backend keeps the interface

    def _is_topic_log(
        log: NatsTopicLog, consumer: NatsTopicConsumer
    ) -> tuple[TopicLog, TopicConsumer]:
        return log, consumer
