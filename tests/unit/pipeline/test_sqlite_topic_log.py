"""SqliteTopicLog specifics: heartbeats on a frozen clock, ownership checks, time order."""

from __future__ import annotations

import sqlite3
import sys
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from hopper.errors import BackendMissing, BackendUnavailable
from hopper.pipeline.topics import TopicError, TopicSettings, open_topic_log, partition_for_key
from hopper.pipeline.topics import sqlite as sqlite_topics
from hopper.pipeline.topics.sqlite import SqliteTopicLog
from hopper.testing import NOW_MS, FrozenClock

SESSION_MS = 10_000


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "topics.db"


@pytest.fixture
def log(path: Path, clock: FrozenClock) -> Iterator[SqliteTopicLog]:
    opened = SqliteTopicLog(path, partitions=4, session_timeout_ms=SESSION_MS, clock=clock)
    opened.ensure_topic("events")
    yield opened
    opened.close()


def committed(path: Path, group: str) -> dict[int, int]:
    with closing(sqlite3.connect(path)) as conn:
        return dict(
            conn.execute(
                "SELECT partition_no, next_offset FROM group_offsets WHERE group_name = ?",
                (group,),
            ).fetchall()
        )


def keyed_for(partition: int, partitions: int = 4) -> bytes:
    n = 0
    while partition_for_key(f"k{n}".encode(), partitions) != partition:
        n += 1
    return f"k{n}".encode()


def test_open_topic_log_picks_sqlite_by_default(tmp_path: Path) -> None:
    log = open_topic_log(TopicSettings(sqlite_path=tmp_path / "t.db"))
    try:
        assert log.backend == "sqlite"
        log.ensure_topic("t")
        assert log.append("t", [(None, b"v")]) == [(0, 0)]
    finally:
        log.close()


@pytest.mark.parametrize(
    ("backend", "module", "library"),
    [("kafka", "confluent_kafka", "confluent-kafka"), ("nats", "nats", "nats-py")],
)
def test_a_broker_backend_without_its_library_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, backend: str, module: str, library: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    monkeypatch.delitem(sys.modules, f"hopper.pipeline.topics.{backend}", raising=False)
    with pytest.raises(BackendMissing, match=rf"{library}: pip install 'hopper\[{backend}\]'"):
        open_topic_log(TopicSettings(backend=backend))  # type: ignore[arg-type]


def test_a_member_past_the_session_timeout_loses_its_partitions_and_its_commits(
    log: SqliteTopicLog, clock: FrozenClock, path: Path
) -> None:
    one = log.consumer("events", "g")
    two = log.consumer("events", "g")
    assert one.poll(10, 0) == [] and one.assignment() == [0, 1, 2, 3]
    two.poll(10, 0)
    one.poll(10, 0)
    assert sorted(one.assignment() + two.assignment()) == [0, 1, 2, 3]
    assert set(one.assignment()).isdisjoint(two.assignment())

    p = one.assignment()[0]
    [(_, offset)] = log.append("events", [(keyed_for(p), b"v")])
    records = one.poll(10, 0)
    assert [(r.partition, r.offset) for r in records] == [(p, offset)]

    clock.advance(SESSION_MS + 1)  # "one" stops polling; "two" goes on
    [again] = two.poll(10, 0)
    assert two.assignment() == [0, 1, 2, 3]
    assert (again.partition, again.offset) == (p, offset), "redelivered to the new owner"
    one.commit(records)  # too late: the partition is someone else's now
    assert committed(path, "g") == {}
    two.commit([again])
    assert committed(path, "g") == {p: offset + 1}

    # The late member rejoins at its next poll and gets its share again.
    one.poll(10, 0)
    two.poll(10, 0)
    assert sorted(one.assignment() + two.assignment()) == [0, 1, 2, 3]


def test_heartbeats_are_written_a_few_times_a_session_not_at_every_poll(
    log: SqliteTopicLog, clock: FrozenClock, path: Path
) -> None:
    consumer = log.consumer("events", "g")
    consumer.poll(10, 0)

    def last_seen() -> int:
        with closing(sqlite3.connect(path)) as conn:
            return int(conn.execute("SELECT last_seen_ms FROM group_members").fetchone()[0])

    assert last_seen() == NOW_MS
    clock.advance(1000)
    consumer.poll(10, 0)
    assert last_seen() == NOW_MS, "no write a second later"
    clock.advance(SESSION_MS // 4)
    consumer.poll(10, 0)
    assert last_seen() == NOW_MS + 1000 + SESSION_MS // 4
    consumer.close()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM group_members").fetchone()[0] == 0


def test_timestamps_never_go_back_within_a_partition(
    log: SqliteTopicLog, clock: FrozenClock
) -> None:
    log.append("events", [(b"k", b"1")])
    clock.advance(-5000)  # the wall clock steps back
    log.append("events", [(b"k", b"2")])
    consumer = log.consumer("events", "g")
    first, second = consumer.poll(10, 0)
    assert first.timestamp_ms == second.timestamp_ms == NOW_MS


def test_seek_to_time_finds_the_first_record_at_or_after_the_time(
    log: SqliteTopicLog, clock: FrozenClock
) -> None:
    key = keyed_for(2)
    for n in range(20):
        log.append("events", [(key, f"{n}".encode())])
        clock.advance(10)
    consumer = log.consumer("events", "g")
    assert len(consumer.poll(100, 0)) == 20
    consumer.seek_to_time(NOW_MS + 75)
    assert [r.value for r in consumer.poll(100, 0)] == [f"{n}".encode() for n in range(8, 20)]
    consumer.seek_to_time(NOW_MS - 1)
    assert len(consumer.poll(100, 0)) == 20
    consumer.seek_to_time(NOW_MS + 10_000)
    assert consumer.poll(100, 0) == []
    with pytest.raises(TopicError):
        consumer.seek(7, 0)


def test_retain_removes_only_the_old_prefix_a_chunk_at_a_time(
    log: SqliteTopicLog, clock: FrozenClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_topics, "RETAIN_CHUNK", 3)
    key = keyed_for(1)
    for n in range(10):
        log.append("events", [(key, f"{n}".encode())])
        clock.advance(1000)
    assert log.retain("events", before_ms=NOW_MS + 7000) == 7
    consumer = log.consumer("events", "g")
    assert [(r.offset, r.value) for r in consumer.poll(100, 0)] == [
        (7, b"7"),
        (8, b"8"),
        (9, b"9"),
    ]
    # The default retention (7 days) is measured on the log's clock.
    clock.advance(7 * 86_400_000)
    assert log.retain("events") == 3
    assert log.append("events", [(key, b"next")]) == [(1, 10)], "offsets never go back"


def test_records_and_offsets_survive_reopening_the_file(path: Path, clock: FrozenClock) -> None:
    first = SqliteTopicLog(path, clock=clock)
    first.ensure_topic("events")
    placed = first.append(
        "events", [(f"k{n}".encode(), bytes([n % 256]) * 220) for n in range(300)]
    )
    consumer = first.consumer("events", "g")
    records = consumer.poll(1000, 0)
    assert len(records) == 300
    consumer.commit(records[:100])
    consumer.close()
    first.close()

    second = SqliteTopicLog(path, clock=clock)
    try:
        again = second.consumer("events", "g").poll(1000, 0)
        # commit() keeps, per partition, the offset after the highest record given.
        highest: dict[int, int] = {}
        for r in records[:100]:
            highest[r.partition] = max(highest.get(r.partition, -1), r.offset)
        expected = {(p, o) for p, o in placed if o > highest.get(p, -1)}
        assert {(r.partition, r.offset) for r in again} == expected
        assert all(r.value == bytes([int(r.key[1:]) % 256]) * 220 for r in again if r.key)
    finally:
        second.close()


def test_concurrent_appenders_on_one_file_get_contiguous_offsets(
    path: Path, clock: FrozenClock
) -> None:
    logs = [SqliteTopicLog(path, clock=clock) for _ in range(3)]
    logs[0].ensure_topic("events")
    placed: list[tuple[int, int]] = []
    lock = threading.Lock()

    def append(log: SqliteTopicLog) -> None:
        for n in range(50):
            got = log.append("events", [(f"k{n % 7}".encode(), b"v")] * 10)
            with lock:
                placed.extend(got)

    threads = [threading.Thread(target=append, args=(log,)) for log in logs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for p in range(4):
        offsets = sorted(o for q, o in placed if q == p)
        assert offsets == list(range(len(offsets)))
    assert len(placed) == 3 * 50 * 10
    for log in logs:
        log.close()


def test_a_file_of_a_newer_schema_is_refused(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(TopicError, match="newer"):
        SqliteTopicLog(path)


def test_an_unusable_path_is_backend_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(BackendUnavailable):
        SqliteTopicLog(tmp_path / "file" / "topics.db")


def test_a_closed_log_or_consumer_refuses_calls(log: SqliteTopicLog) -> None:
    consumer = log.consumer("events", "g")
    consumer.close()
    consumer.close()  # twice is fine
    with pytest.raises(TopicError):
        consumer.poll(10, 0)
    log.close()
    with pytest.raises(TopicError):
        log.append("events", [(None, b"v")])
