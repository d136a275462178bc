"""Topic log benchmark: append and consume rates per backend, beside the raw client's.

For each backend (SQLite file, Kafka on a Tansu broker of its own, NATS JetStream on
127.0.0.1:4222) the same records (about 220-byte values, keyed by one of 1,000 device ids,
4 partitions) are written in appends of 100 records, each durable before the next
starts, then read back by a new consumer group that commits after every batch of up to
100. Each rate is measured twice in the same run: through Hopper's TopicLog, and through
the raw client doing the same work (sqlite3 inserts in one transaction an append;
confluent-kafka Producer.produce + flush and Consumer.consume + commit; nats-py
publish_async + acks and a pull consumer with fetch + ack). A consume rate is timed from
the first record received to the last (group joins are not counted).

    .venv/bin/python bench/bench_topics.py                       # all three, 50,000 records
    .venv/bin/python bench/bench_topics.py --backends sqlite --records 20000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from pathlib import Path

from hopper.pipeline.topics import TopicSettings, open_topic_log
from hopper.pipeline.topics.sqlite import SqliteTopicLog
from hopper.testing import run_tansu

PARTITIONS = 4
BATCH = 100
VALUE_BYTES = 220
NATS_URL = "nats://127.0.0.1:4222"

Records = list[tuple[bytes | None, bytes]]


def make_batches(count: int) -> list[Records]:
    rng = random.Random(11)
    records: Records = [
        (f"tablet-{rng.randrange(1000):04d}".encode(), rng.randbytes(VALUE_BYTES))
        for _ in range(count)
    ]
    return [records[i : i + BATCH] for i in range(0, count, BATCH)]


def rate(count: int, secs: float) -> float:
    return count / secs if secs > 0 else float("inf")


def timed_appends(append: Callable[[Records], object], batches: list[Records]) -> float:
    append(batches[0])  # warm-up (connections, statements), not counted
    start = time.perf_counter()
    for batch in batches[1:]:
        append(batch)
    return rate(sum(map(len, batches[1:])), time.perf_counter() - start)


def timed_consume(poll_and_commit: Callable[[], int], total: int, timeout: float = 120.0) -> float:
    """Call until ``total`` records came; rate from the first batch received to the last."""
    seen, timed, first = 0, 0, None
    deadline = time.monotonic() + timeout
    while seen < total:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {seen} of {total} records consumed")
        n = poll_and_commit()
        seen += n
        if n and first is None:
            first = time.perf_counter()  # the first batch starts the clock, uncounted
        elif first is not None:
            timed += n
    assert first is not None
    return rate(timed, time.perf_counter() - first)


# -- Hopper ------------------------------------------------------------------------------


def hopper_rates(settings: TopicSettings, batches: list[Records]) -> tuple[float, float]:
    log = open_topic_log(settings)
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        log.ensure_topic(topic, PARTITIONS)
        append_rate = timed_appends(lambda batch: log.append(topic, batch), batches)
        consumer = log.consumer(topic, f"bench-{uuid.uuid4().hex[:8]}")

        def poll_and_commit() -> int:
            records = consumer.poll(BATCH, 1.0)
            if records:
                consumer.commit(records)
            return len(records)

        total = sum(map(len, batches))
        consume_rate = timed_consume(poll_and_commit, total)
        consumer.close()
        return append_rate, consume_rate
    finally:
        log.close()


# -- raw sqlite3 ---------------------------------------------------------------------


def sqlite_raw_rates(path: Path, batches: list[Records]) -> tuple[float, float]:
    SqliteTopicLog(path).close()  # the same tables and pragmas as Hopper's
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("INSERT INTO topics (name, partitions, created_ms) VALUES ('raw', 4, 0)")
        topic_id = conn.execute("SELECT topic_id FROM topics WHERE name = 'raw'").fetchone()[0]
        next_offset = [0] * PARTITIONS

        def append(batch: Records) -> None:
            now = time.time_ns() // 1_000_000
            rows = []
            for key, value in batch:
                p = zlib.crc32(key or b"") % PARTITIONS
                rows.append((topic_id, p, next_offset[p], now, key, value))
                next_offset[p] += 1
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO topic_records VALUES (?, ?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")

        append_rate = timed_appends(append, batches)
        positions = [0] * PARTITIONS
        turn = [0]

        def poll_and_commit() -> int:
            turn[0] += 1
            rows: list[tuple[int, int, bytes | None, bytes]] = []
            read: dict[int, int] = {}
            for i in range(PARTITIONS):
                p = (turn[0] + i) % PARTITIONS
                got = conn.execute(
                    "SELECT record_offset, ts_ms, key, value FROM topic_records"
                    " WHERE topic_id = ? AND partition_no = ? AND record_offset >= ?"
                    " ORDER BY record_offset LIMIT ?",
                    (topic_id, p, positions[p], BATCH - len(rows)),
                ).fetchall()
                if got:
                    positions[p] = read[p] = got[-1][0] + 1
                    rows += got
                if len(rows) >= BATCH:
                    break
            if read:
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(
                    "INSERT INTO group_offsets VALUES ('raw', ?, ?, ?, 0) ON CONFLICT"
                    " DO UPDATE SET next_offset = excluded.next_offset",
                    [(topic_id, p, offset) for p, offset in read.items()],
                )
                conn.execute("COMMIT")
            return len(rows)

        return append_rate, timed_consume(poll_and_commit, sum(map(len, batches)))


# -- raw confluent-kafka ---------------------------------------------------------------


def kafka_raw_rates(bootstrap: str, batches: list[Records]) -> tuple[float, float]:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    topic = f"raw-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(10)
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})

    def append(batch: Records) -> None:
        for key, value in batch:
            producer.produce(topic, value, key, partition=zlib.crc32(key or b"") % PARTITIONS)
        if producer.flush(10):
            raise RuntimeError("Kafka did not ack in time")

    append_rate = timed_appends(append, batches)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"raw-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])

    def poll_and_commit() -> int:
        messages = consumer.consume(BATCH, 0)
        if not messages:
            first = consumer.poll(1.0)
            messages = [first] if first is not None else []
        if messages:
            consumer.commit(asynchronous=False)
        return len(messages)

    try:
        return append_rate, timed_consume(poll_and_commit, sum(map(len, batches)))
    finally:
        consumer.close()
        producer.flush(1)


@contextmanager
def tansu_broker() -> Iterator[str]:
    try:
        with run_tansu() as port:
            yield f"127.0.0.1:{port}"
    except FileNotFoundError as exc:
        raise SystemExit(f"Kafka needs the Tansu broker: {exc}") from exc


# -- raw nats-py -------------------------------------------------------------------------


async def _nats_raw(prefix: str, batches: list[Records]) -> tuple[float, float]:
    import nats
    from nats.js import api

    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    stream = f"{prefix}_raw"
    subjects = [f"{prefix}.raw.{p}" for p in range(PARTITIONS)]
    await js.add_stream(
        api.StreamConfig(name=stream, subjects=subjects, storage=api.StorageType.FILE)
    )

    async def append(batch: Records) -> None:
        futures = [
            await js.publish_async(
                subjects[zlib.crc32(key or b"") % PARTITIONS],
                value,
                headers=None if key is None else {"Hopper-Key": key.decode()},
            )
            for key, value in batch
        ]
        await asyncio.gather(*futures)

    await append(batches[0])
    start = time.perf_counter()
    for batch in batches[1:]:
        await append(batch)
    append_rate = rate(sum(map(len, batches[1:])), time.perf_counter() - start)

    pull = await js.pull_subscribe(
        f"{prefix}.raw.*",
        durable="raw",
        stream=stream,
        config=api.ConsumerConfig(ack_policy=api.AckPolicy.ALL, max_ack_pending=-1),
    )
    total = sum(map(len, batches))
    seen, timed, first = 0, 0, None
    while seen < total:
        try:
            messages = await pull.fetch(BATCH, timeout=1.0)
        except TimeoutError:
            continue
        await messages[-1].ack_sync()
        seen += len(messages)
        if first is None:
            first = time.perf_counter()
        else:
            timed += len(messages)
    assert first is not None
    consume_rate = rate(timed, time.perf_counter() - first)
    await nc.close()
    return append_rate, consume_rate


async def _drop_nats(prefix: str) -> None:
    import nats

    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    for info in await js.streams_info():
        name = info.config.name or ""
        if name.startswith((f"{prefix}_", f"KV_{prefix}_")):
            await js.delete_stream(name)
    await nc.close()


# -- run -----------------------------------------------------------------------------------


def run_backend(backend: str, batches: list[Records], rounds: int) -> dict[str, list[float]]:
    names = ("append", "append_raw", "consume", "consume_raw")
    figures: dict[str, list[float]] = {k: [] for k in names}

    def record(hopper: tuple[float, float], raw: tuple[float, float]) -> None:
        figures["append"].append(hopper[0])
        figures["consume"].append(hopper[1])
        figures["append_raw"].append(raw[0])
        figures["consume_raw"].append(raw[1])
        print(
            f"  {backend}: append {hopper[0]:,.0f} (raw {raw[0]:,.0f}) events/s, "
            f"consume {hopper[1]:,.0f} (raw {raw[1]:,.0f}) events/s",
            flush=True,
        )

    for _ in range(rounds):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory(prefix="bench-topics-") as tmp:
                raw = sqlite_raw_rates(Path(tmp) / "raw.db", batches)
                settings = TopicSettings(backend="sqlite", sqlite_path=Path(tmp) / "topics.db")
                record(hopper_rates(settings, batches), raw)
        elif backend == "kafka":
            with tansu_broker() as bootstrap:
                raw = kafka_raw_rates(bootstrap, batches)
                settings = TopicSettings(backend="kafka", kafka_bootstrap=bootstrap)
                record(hopper_rates(settings, batches), raw)
        else:
            prefix = f"bench-{uuid.uuid4().hex[:8]}"
            try:
                raw = asyncio.run(_nats_raw(prefix, batches))
                settings = TopicSettings(backend="nats", nats_url=NATS_URL, nats_prefix=prefix)
                record(hopper_rates(settings, batches), raw)
            finally:
                asyncio.run(_drop_nats(prefix))
    return figures


def describe_machine() -> str:
    import confluent_kafka

    parts = [
        f"Python {platform.python_version()}",
        f"{os.cpu_count()} CPUs",
        f"SQLite {sqlite3.sqlite_version}",
        f"confluent-kafka {confluent_kafka.version()[0]}"
        f" (librdkafka {confluent_kafka.libversion()[0]})",
    ]
    with suppress(ImportError):
        from importlib.metadata import version

        parts.append(f"nats-py {version('nats-py')}")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="sqlite,kafka,nats")
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3, help="medians over this many runs")
    args = parser.parse_args()
    batches = make_batches(args.records)
    print(f"bench_topics: {args.records:,} records, {describe_machine()}", flush=True)
    results = {b: run_backend(b, batches, args.rounds) for b in args.backends.split(",")}
    print()
    print(
        "| backend | append, events/s (raw client) | ratio "
        "| consume + commit, events/s (raw client) | ratio |"
    )
    print("| --- | --- | --- | --- | --- |")
    for backend, figures in results.items():
        m = {k: statistics.median(v) for k, v in figures.items()}
        print(
            f"| {backend} | {m['append']:,.0f} ({m['append_raw']:,.0f}) "
            f"| {m['append'] / m['append_raw']:.2f} "
            f"| {m['consume']:,.0f} ({m['consume_raw']:,.0f}) "
            f"| {m['consume'] / m['consume_raw']:.2f} |"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
