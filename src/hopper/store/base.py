"""The EventStore interface: the durable home of accepted and rejected events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from hopper.events.model import Event
from hopper.sinks.base import PendingWrite


@dataclass(slots=True, frozen=True)
class StoredError:
    """A row of ``reader_events_errors``."""

    received_ms: int
    source: str
    reason: str
    detail: str
    raw: bytes  # at most ingest.error_raw_max_bytes: a prefix when raw_size is larger
    raw_size: int | None = None  # the refused bytes' full length (None in rows before v2)
    raw_hash: bytes | None = None  # their content hash, when they were all read


class EventStore(Protocol):
    """Durable home of accepted events, their raw bytes, and rejections: a durable sink.

    The dedup index is the primary key of ``raw_events``: ``(app_time_ms, hash)``. Being
    time-prefixed, inserts touch only the right edge of the index and lookups of events
    inside ``max_event_age`` touch only its recent pages, so the cost stays flat as the
    store grows. It is written in the same transaction as the events.
    """

    name: str  # "store": its component name in the metrics
    backend: str
    # True when a commit mostly waits for another process (a database server): the
    # intake then runs the stages in a thread of their own, beside the commit.
    commit_waits_on_server: bool

    def migrate(self) -> int:
        """Bring the schema to the latest version; return how many migrations ran."""
        ...

    def commit(self, writes: Sequence[PendingWrite]) -> list[list[Event]]:
        """Write every write's events and rejections in one transaction.

        Returns, per write, the events that were new and are now stored; the others
        were duplicates of stored events (or of an earlier write in the same call).
        Returns only once the transaction is durable.
        """
        ...

    def purge_errors(self, older_than_ms: int) -> int:
        """Delete rejected events received before ``older_than_ms``; return the count."""
        ...

    def count(self, table: str) -> int:
        """Return the number of rows of one of the store's tables."""
        ...

    def errors(self, limit: int = 100) -> list[StoredError]:
        """Return the most recently recorded rejections, newest first."""
        ...

    def ping(self) -> None:
        """Raise BackendUnavailable if the store cannot be used."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


TABLES = ("reader_events", "raw_events", "reader_events_errors")


class DedupIndex(Protocol):
    """Remembers keys for a window of time; tells which keys of a batch are new.

    The edge's event store keeps its own index, the primary key of ``raw_events``, inside
    its commit's transaction; this interface is for stages that dedup on other keys (a
    Sunbird bundle's ``msgid``, an event's ``mid``) before any store sees the records.
    Guarantees: ``claim`` is atomic per call (two claimants of a key: one gets it), keys
    are kept at least ``ttl_ms`` after they were claimed, and ``purge`` drops older ones.
    """

    def claim(self, namespace: str, keys: Sequence[bytes], now_ms: int) -> list[bool]:
        """Record the keys; return, per key, True when it was not seen before."""
        ...

    def purge(self, older_than_ms: int) -> int:
        """Forget keys claimed before ``older_than_ms``; return how many."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
