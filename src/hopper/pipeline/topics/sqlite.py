"""SqliteTopicLog: the embedded topic log in one SQLite file (the default; no server).

Tables: ``topics`` (name, partition count), ``topic_partitions`` (the next offset and the
last timestamp of each partition), ``topic_records`` (the records, keyed by topic,
partition and offset), ``group_offsets`` (committed offsets) and ``group_members`` (live
members and their heartbeats). Several processes may share the file (WAL mode, a busy
timeout); an append is one ``BEGIN IMMEDIATE`` transaction, durable once committed
(``synchronous=NORMAL`` in WAL mode survives a process crash, as the event store does).

Consumer groups: a member is a row in ``group_members`` whose heartbeat (``last_seen_ms``)
is refreshed by its polls; members seen within the session timeout are live. The
partitions are dealt in turn to the live members sorted by id (``deal_partitions``), so
every member computes the same assignment from the same rows; a member sees a rebalance
at its next poll. ``commit`` checks, in the same transaction that writes the offsets, that
the member still owns each partition, so a member that lost a partition cannot overwrite
its new owner's commits. A member that joins takes partitions from the others at once;
until their next poll both may read them (records delivered twice, never lost).

Timestamps are the appender's clock, kept non-decreasing within a partition, so a
partition's records are in time order too: ``seek_to_time`` and ``retain`` find their
boundary by a binary search on the offsets.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hopper.clock import Clock, SystemClock
from hopper.config import TopicSettings
from hopper.errors import BackendUnavailable
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

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    topic_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    partitions INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS topic_partitions (
    topic_id INTEGER NOT NULL,
    partition_no INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    last_ts_ms INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition_no)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS topic_records (
    topic_id INTEGER NOT NULL,
    partition_no INTEGER NOT NULL,
    record_offset INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    key BLOB,
    value BLOB NOT NULL,
    PRIMARY KEY (topic_id, partition_no, record_offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_offsets (
    group_name TEXT NOT NULL,
    topic_id INTEGER NOT NULL,
    partition_no INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    committed_ms INTEGER NOT NULL,
    PRIMARY KEY (group_name, topic_id, partition_no)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_members (
    group_name TEXT NOT NULL,
    topic_id INTEGER NOT NULL,
    member_id TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (group_name, topic_id, member_id)
) WITHOUT ROWID;
"""

# A poll that finds nothing looks again after this long (another process may append).
POLL_INTERVAL_SECS = 0.02
# A member writes its heartbeat at most this many times a session timeout.
HEARTBEATS_PER_SESSION = 4
# Retention deletes at most this many records a transaction, so appends are not held up.
RETAIN_CHUNK = 10_000

# Records are inserted by multi-row statements of these sizes (one sqlite3 step, one GIL
# hand-off, per statement rather than per row, as in the event store).
_CHUNK_SIZES = (256, 64, 16, 4, 1)
_RECORD_COLUMNS = ("topic_id", "partition_no", "record_offset", "ts_ms", "key", "value")


@cache
def _insert_records_sql(rows: int) -> str:
    one = f"({','.join('?' * len(_RECORD_COLUMNS))})"
    return (
        f"INSERT INTO topic_records ({', '.join(_RECORD_COLUMNS)}) VALUES "  # noqa: S608
        + ",".join([one] * rows)
    )


def _insert_records(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    start = 0
    for size in _CHUNK_SIZES:
        while len(rows) - start >= size:
            flat = [v for row in rows[start : start + size] for v in row]
            conn.execute(_insert_records_sql(size), flat)
            start += size


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


@contextlib.contextmanager
def _write(conn: sqlite3.Connection, what: str) -> Iterator[None]:
    """Run the block in one IMMEDIATE transaction; SQLite errors become BackendUnavailable."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        _rollback(conn)
        raise BackendUnavailable(f"SQLite topic log: {what} failed: {exc}") from exc
    except BaseException:
        _rollback(conn)
        raise


def _connect(path: Path, busy_timeout_secs: float, synchronous: str) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            path, timeout=busy_timeout_secs, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
        conn.execute(f"PRAGMA synchronous={synchronous}")
    except (sqlite3.Error, OSError) as exc:
        raise BackendUnavailable(f"Cannot open SQLite topic log {path}: {exc}") from exc
    return conn


def _first_at_or_after(
    conn: sqlite3.Connection, topic_id: int, partition: int, timestamp_ms: int
) -> int:
    """Return the offset of the partition's first record at or after the time (or its end)."""
    row = conn.execute(
        "SELECT next_offset FROM topic_partitions WHERE topic_id = ? AND partition_no = ?",
        (topic_id, partition),
    ).fetchone()
    end = row[0] if row else 0
    first = conn.execute(
        "SELECT MIN(record_offset) FROM topic_records WHERE topic_id = ? AND partition_no = ?",
        (topic_id, partition),
    ).fetchone()[0]
    lo = end if first is None else first
    hi = end
    # Offsets are contiguous from the first retained one, and timestamps non-decreasing.
    while lo < hi:
        mid = (lo + hi) // 2
        ts = conn.execute(
            "SELECT ts_ms FROM topic_records"
            " WHERE topic_id = ? AND partition_no = ? AND record_offset = ?",
            (topic_id, partition, mid),
        ).fetchone()
        if ts is None or ts[0] >= timestamp_ms:
            hi = mid
        else:
            lo = mid + 1
    return lo


class SqliteTopicLog:
    """Topic log in one SQLite file; safe to share between threads and processes."""

    backend = "sqlite"

    def __init__(
        self,
        path: Path,
        *,
        partitions: int = 4,
        retention_ms: int = 7 * 86_400_000,
        session_timeout_ms: int = 10_000,
        busy_timeout_secs: float = 10.0,
        synchronous: str = "NORMAL",
        max_record_bytes: int = 1_000_000,
        clock: Clock | None = None,
    ) -> None:
        self.path = path
        self.partitions = partitions
        self.retention_ms = retention_ms
        self.session_timeout_ms = session_timeout_ms
        self.max_record_bytes = max_record_bytes
        self._busy_timeout_secs = busy_timeout_secs
        self._synchronous = synchronous
        self._clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._topics: dict[str, tuple[int, int]] = {}  # name -> (topic_id, partitions)
        self._turn = 0
        self._closed = False
        self._conn = self.connect()
        try:
            self._migrate()
        except BaseException:
            self._conn.close()
            raise

    @classmethod
    def from_settings(cls, settings: TopicSettings, clock: Clock | None = None) -> SqliteTopicLog:
        """Open the log the settings name."""
        return cls(
            settings.sqlite_path,
            partitions=settings.partitions,
            retention_ms=settings.retention_secs * 1000,
            session_timeout_ms=int(settings.session_timeout_secs * 1000),
            busy_timeout_secs=settings.request_timeout_secs,
            synchronous=settings.sqlite_synchronous,
            max_record_bytes=settings.max_record_bytes,
            clock=clock,
        )

    def connect(self) -> sqlite3.Connection:
        """Open a new connection to the log's file (each consumer has its own)."""
        return _connect(self.path, self._busy_timeout_secs, self._synchronous)

    def now_ms(self) -> int:
        """Return the log's clock's time."""
        return self._clock.now_ms()

    def _migrate(self) -> None:
        try:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise TopicError(
                    f"SQLite topic log {self.path} has schema {version}, newer than this "
                    f"Hopper's {SCHEMA_VERSION}: upgrade Hopper."
                )
            if version < SCHEMA_VERSION:
                self._conn.executescript(
                    f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version={SCHEMA_VERSION};COMMIT;"
                )
        except sqlite3.Error as exc:
            _rollback(self._conn)
            raise BackendUnavailable(f"Cannot set up SQLite topic log {self.path}: {exc}") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise TopicError("The topic log is closed.")

    def _topic_info(self, conn: sqlite3.Connection, topic: str) -> tuple[int, int]:
        """Return ``(topic_id, partitions)`` of an existing topic, else raise TopicNotFoundError."""
        known = self._topics.get(topic)
        if known is not None:
            return known
        check_name("topic", topic)
        try:
            row = conn.execute(
                "SELECT topic_id, partitions FROM topics WHERE name = ?", (topic,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"SQLite topic log: reading topics failed: {exc}") from exc
        if row is None:
            raise TopicNotFoundError(topic)
        self._topics[topic] = (row[0], row[1])  # topics are never dropped nor resized
        return row[0], row[1]

    def ensure_topic(self, topic: str, partitions: int | None = None) -> None:
        """Create the topic unless it exists (an existing one keeps its partitions)."""
        check_name("topic", topic)
        count = self.partitions if partitions is None else partitions
        if count <= 0:
            raise TopicError(f"A topic needs at least one partition, not {count}.")
        with self._lock:
            self._check_open()
            conn = self._conn
            with _write(conn, "creating a topic"):
                row = conn.execute(
                    "SELECT partitions FROM topics WHERE name = ?", (topic,)
                ).fetchone()
                if row is None:
                    now = self._clock.now_ms()
                    cursor = conn.execute(
                        "INSERT INTO topics (name, partitions, created_ms) VALUES (?, ?, ?)",
                        (topic, count, now),
                    )
                    conn.executemany(
                        "INSERT INTO topic_partitions VALUES (?, ?, 0, 0)",
                        [(cursor.lastrowid, p) for p in range(count)],
                    )
                    logger.info("Created topic %s with %d partitions.", topic, count)
                elif row[0] != count and partitions is not None:
                    logger.warning(
                        "Topic %s exists with %d partitions, not %d: kept as it is.",
                        topic,
                        row[0],
                        count,
                    )

    def append(self, topic: str, records: Sequence[KeyedValue]) -> list[tuple[int, int]]:
        """Append the records in one transaction; return (partition, offset) of each."""
        if not records:
            return []
        check_record_sizes(records, self.max_record_bytes)
        with self._lock:
            self._check_open()
            conn = self._conn
            topic_id, partitions = self._topic_info(conn, topic)
            placement = place_records(records, partitions, self._turn)
            self._turn += 1
            placed: list[tuple[int, int]] = []
            with _write(conn, "append"):
                # Read inside the write lock: offsets and timestamps follow commit order.
                now = self._clock.now_ms()
                state = {
                    p: [next_offset, max(now, last_ts)]
                    for p, next_offset, last_ts in conn.execute(
                        "SELECT partition_no, next_offset, last_ts_ms FROM topic_partitions"
                        " WHERE topic_id = ?",
                        (topic_id,),
                    )
                }
                rows = []
                for (key, value), p in zip(records, placement, strict=True):
                    offset_ts = state[p]
                    rows.append((topic_id, p, offset_ts[0], offset_ts[1], key, value))
                    placed.append((p, offset_ts[0]))
                    offset_ts[0] += 1
                _insert_records(conn, rows)
                conn.executemany(
                    "UPDATE topic_partitions SET next_offset = ?, last_ts_ms = ?"
                    " WHERE topic_id = ? AND partition_no = ?",
                    [(state[p][0], state[p][1], topic_id, p) for p in set(placement)],
                )
            return placed

    def consumer(self, topic: str, group: str, *, start: Start = "earliest") -> SqliteTopicConsumer:
        """Join ``group`` as a new member reading ``topic``."""
        check_name("group", group)
        with self._lock:
            self._check_open()
            topic_id, partitions = self._topic_info(self._conn, topic)
        return SqliteTopicConsumer(self, topic, topic_id, partitions, group, start)

    def retain(self, topic: str, before_ms: int | None = None) -> int:
        """Remove the records appended before ``before_ms`` (default: now - retention)."""
        cutoff = self._clock.now_ms() - self.retention_ms if before_ms is None else before_ms
        removed = 0
        with self._lock:
            self._check_open()
            conn = self._conn
            topic_id, partitions = self._topic_info(conn, topic)
            for p in range(partitions):
                try:
                    boundary = _first_at_or_after(conn, topic_id, p, cutoff)
                except sqlite3.Error as exc:
                    raise BackendUnavailable(f"SQLite topic log: retain failed: {exc}") from exc
                while True:
                    # Old records are a prefix of the partition: delete it a chunk at a time.
                    with _write(conn, "retain"):
                        first = conn.execute(
                            "SELECT MIN(record_offset) FROM topic_records"
                            " WHERE topic_id = ? AND partition_no = ?",
                            (topic_id, p),
                        ).fetchone()[0]
                        if first is None or first >= boundary:
                            break
                        cursor = conn.execute(
                            "DELETE FROM topic_records WHERE topic_id = ? AND partition_no = ?"
                            " AND record_offset < ?",
                            (topic_id, p, min(boundary, first + RETAIN_CHUNK)),
                        )
                        removed += cursor.rowcount
        if removed:
            logger.info("Removed %d records older than retention from topic %s.", removed, topic)
        return removed

    def close(self) -> None:
        """Close the log's own connection."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()


class SqliteTopicConsumer:
    """One member of a consumer group on an SQLite topic log."""

    def __init__(
        self,
        log: SqliteTopicLog,
        topic: str,
        topic_id: int,
        partitions: int,
        group: str,
        start: Start,
    ) -> None:
        self.topic = topic
        self.group = group
        self.member_id = uuid.uuid4().hex
        self._log = log
        self._topic_id = topic_id
        self._partitions = partitions
        self._start = start
        self._conn = log.connect()
        self._lock = threading.Lock()
        self._owned: list[int] = []
        self._positions: dict[int, int] = {}  # next offset to read, per owned partition
        self._last_heartbeat_ms: int | None = None
        self._turn = 0
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise TopicError("The consumer is closed.")

    def _heartbeat(self, conn: sqlite3.Connection, now: int) -> None:
        """Write this member's heartbeat and forget members past the session timeout."""
        key = (self.group, self._topic_id)
        conn.execute(
            "INSERT INTO group_members VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE"
            " SET last_seen_ms = excluded.last_seen_ms",
            (*key, self.member_id, now),
        )
        conn.execute(
            "DELETE FROM group_members WHERE group_name = ? AND topic_id = ? AND last_seen_ms < ?",
            (*key, now - self._log.session_timeout_ms),
        )
        self._last_heartbeat_ms = now

    def _is_heartbeat_due(self, now: int) -> bool:
        last = self._last_heartbeat_ms
        interval = self._log.session_timeout_ms / HEARTBEATS_PER_SESSION
        return last is None or now - last >= interval or now < last

    def _live_members(self, conn: sqlite3.Connection, now: int) -> list[str]:
        return [
            row[0]
            for row in conn.execute(
                "SELECT member_id FROM group_members"
                " WHERE group_name = ? AND topic_id = ? AND last_seen_ms >= ?",
                (self.group, self._topic_id, now - self._log.session_timeout_ms),
            )
        ]

    def _refresh(self) -> None:
        """Keep this member alive and take up the group's current assignment."""
        conn = self._conn
        now = self._log.now_ms()
        if self._is_heartbeat_due(now):
            with _write(conn, "heartbeat"):
                self._heartbeat(conn, now)
        try:
            members = self._live_members(conn, now)
            if self.member_id not in members:  # expired (a long pause): join again
                with _write(conn, "heartbeat"):
                    self._heartbeat(conn, now)
                members = self._live_members(conn, now)
            owned = deal_partitions(members, self.member_id, self._partitions)
            gained = [p for p in owned if p not in self._positions]
            if gained:
                self._positions.update(self._start_positions(conn, gained))
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"SQLite topic log: reading the group failed: {exc}") from exc
        for p in [p for p in self._positions if p not in owned]:
            del self._positions[p]
        if owned != self._owned:
            logger.info(
                "Consumer %s of group %s on topic %s now owns partitions %s.",
                self.member_id[:8],
                self.group,
                self.topic,
                owned,
            )
        self._owned = owned

    def _start_positions(self, conn: sqlite3.Connection, partitions: list[int]) -> dict[int, int]:
        committed = dict(
            conn.execute(
                "SELECT partition_no, next_offset FROM group_offsets"
                " WHERE group_name = ? AND topic_id = ?",
                (self.group, self._topic_id),
            ).fetchall()
        )
        ends = dict(
            conn.execute(
                "SELECT partition_no, next_offset FROM topic_partitions WHERE topic_id = ?",
                (self._topic_id,),
            ).fetchall()
        )
        default: dict[int, int] = ends if self._start == "latest" else {}
        return {p: int(committed.get(p, default.get(p, 0))) for p in partitions}

    def _read(self, max_records: int) -> list[TopicRecord]:
        records: list[TopicRecord] = []
        owned = self._owned
        if not owned:
            return records
        self._turn += 1
        try:
            for i in range(len(owned)):
                p = owned[(self._turn + i) % len(owned)]
                rows = self._conn.execute(
                    "SELECT record_offset, ts_ms, key, value FROM topic_records"
                    " WHERE topic_id = ? AND partition_no = ? AND record_offset >= ?"
                    " ORDER BY record_offset LIMIT ?",
                    (self._topic_id, p, self._positions[p], max_records - len(records)),
                ).fetchall()
                if rows:
                    records += [TopicRecord(self.topic, p, o, k, v, ts) for o, ts, k, v in rows]
                    self._positions[p] = rows[-1][0] + 1
                    if len(records) >= max_records:
                        break
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"SQLite topic log: reading records failed: {exc}") from exc
        return records

    def poll(self, max_records: int, timeout_secs: float) -> list[TopicRecord]:
        """Return up to ``max_records`` records, waiting at most ``timeout_secs`` for one."""
        deadline = time.monotonic() + timeout_secs
        while True:
            with self._lock:
                self._check_open()
                self._refresh()
                records = self._read(max_records)
            remaining = deadline - time.monotonic()
            if records or remaining <= 0 or max_records <= 0:
                return records
            time.sleep(min(POLL_INTERVAL_SECS, remaining))

    def commit(self, records: Sequence[TopicRecord]) -> None:
        """Commit the offsets after the records, for the partitions this member still owns."""
        after = next_offsets(records)
        if not after:
            return
        with self._lock:
            self._check_open()
            conn = self._conn
            now = self._log.now_ms()
            skipped: list[int] = []
            with _write(conn, "commit"):
                members = self._live_members(conn, now)
                if self.member_id in members:
                    if self._is_heartbeat_due(now):
                        self._heartbeat(conn, now)
                    owned = deal_partitions(members, self.member_id, self._partitions)
                else:
                    owned = []
                rows = []
                for p, offset in sorted(after.items()):
                    if p in owned:
                        rows.append((self.group, self._topic_id, p, offset, now))
                    else:
                        skipped.append(p)
                conn.executemany(
                    "INSERT INTO group_offsets VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE"
                    " SET next_offset = excluded.next_offset,"
                    " committed_ms = excluded.committed_ms",
                    rows,
                )
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
        with self._lock:
            self._check_open()
            if partition not in self._positions:
                raise TopicError(
                    f"Partition {partition} of topic {self.topic} is not owned by this "
                    f"consumer (it owns {self._owned}): poll first, or seek an owned one."
                )
            self._positions[partition] = max(0, offset)

    def seek_to_time(self, timestamp_ms: int) -> None:
        """Read every owned partition from its first record at or after the time."""
        with self._lock:
            self._check_open()
            try:
                for p in self._positions:
                    self._positions[p] = _first_at_or_after(
                        self._conn, self._topic_id, p, timestamp_ms
                    )
            except sqlite3.Error as exc:
                raise BackendUnavailable(f"SQLite topic log: seek failed: {exc}") from exc

    def assignment(self) -> list[int]:
        """Return the partitions this member owned at its last poll."""
        return list(self._owned)

    def close(self) -> None:
        """Leave the group: the others take its partitions at their next poll."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                with _write(self._conn, "leaving the group"):
                    self._conn.execute(
                        "DELETE FROM group_members"
                        " WHERE group_name = ? AND topic_id = ? AND member_id = ?",
                        (self.group, self._topic_id, self.member_id),
                    )
            except BackendUnavailable as exc:
                # The others take over when the heartbeat expires instead.
                logger.warning("Consumer %s could not leave its group: %s.", self.member_id, exc)
            finally:
                self._conn.close()


if TYPE_CHECKING:  # mypy checks that the backend keeps the interface

    def _is_topic_log(
        log: SqliteTopicLog, consumer: SqliteTopicConsumer
    ) -> tuple[TopicLog, TopicConsumer]:
        return log, consumer
