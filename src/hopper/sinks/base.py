"""Sinks: where records leave a topology, durable or live.

    durable sink   commits a group of writes in one go and returns only once it is durable;
                   a source's acknowledgement waits for every durable sink of its topology
                   (the event store, a topic). It may wait on a server; when that server is
                   down it raises ``BackendUnavailable`` and the writer retries it.
    live sink      best effort, after the acknowledgement (a pub/sub channel); it never
                   blocks the writer: it has its own bounded buffer and drops (and counts)
                   what does not fit.
    batching sink  a durable sink that gathers records and writes them when a batch is full
                   by size, count or age (object-store files, a search index), and signals
                   back pressure with ``SinkBackpressure(retry_after_secs)``.

A topology's first durable sink is its *record*: what it reports as newly stored decides
the acknowledgement's ``accepted`` and ``duplicates`` counts, and is what the live sinks
publish. The other durable sinks receive every record that passed the chain, duplicates
of stored ones included, so that a redelivery after a crash between two sinks' commits
still reaches the sink that missed it (it must be idempotent, or its consumers dedup).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from hopper.errors import HopperError
from hopper.events.model import Event, Rejection

R = TypeVar("R")


@dataclass(slots=True)
class PendingWrite:
    """One delivery's chain output, waiting for the group commit."""

    source: str
    received_ms: int
    events: list[Event]
    rejections: list[Rejection] = field(default_factory=list)


class DurableSink(Protocol):
    """Commits groups of writes; returns only once they are durable.

    Guarantees: ``commit`` is called from one writer thread; it writes every write's
    records (and, for a sink that keeps them, its rejections) or raises. It raises
    ``BackendUnavailable`` for trouble worth retrying (the same group is offered again);
    any other exception means the group's data broke it.
    """

    name: str
    # True when a commit mostly waits for another process: the writer then runs the chain
    # in a thread of its own, beside the commit.
    commit_waits_on_server: bool

    def commit(self, writes: Sequence[PendingWrite]) -> list[list[Event]]:
        """Write a group; return, per write, the events that are new in this sink."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class LiveSink(Protocol):
    """Receives newly stored events after the acknowledgement; best effort, never blocks."""

    name: str

    def offer(self, batches: Sequence[tuple[list[Event], int]]) -> None:
        """Take the new events of a group commit (with each write's received time)."""
        ...

    def start(self) -> None:
        """Start delivering."""
        ...

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is buffered, then stop."""
        ...


class SinkBackpressure(HopperError):
    """A batching sink is full or its server is slow: offer the data again later."""

    def __init__(self, message: str, *, retry_after_secs: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_secs = retry_after_secs


class BatchingSink(Generic[R]):
    """Gathers records and writes them in batches, when full by count or size, or old.

    Subclasses implement ``write(batch)``; ``add`` refuses with ``SinkBackpressure`` when
    the buffer already holds ``max_buffer_bytes`` (the owner should flush or wait), so the
    buffer stays bounded whatever arrives.
    """

    def __init__(
        self,
        *,
        max_records: int = 10_000,
        max_bytes: int = 16 * 1024 * 1024,
        max_age_secs: float = 60.0,
        max_buffer_bytes: int | None = None,
    ) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.max_age_secs = max_age_secs
        self.max_buffer_bytes = max_buffer_bytes or 2 * max_bytes
        self._buffer: list[R] = []
        self._bytes = 0
        self._oldest: float | None = None

    def add(self, record: R, size: int) -> None:
        """Buffer one record of ``size`` bytes; raise SinkBackpressure when full."""
        if self._buffer and self._bytes + size > self.max_buffer_bytes:
            raise SinkBackpressure(
                f"buffer holds {self._bytes} bytes (max {self.max_buffer_bytes}); flush first"
            )
        if self._oldest is None:
            self._oldest = time.monotonic()
        self._buffer.append(record)
        self._bytes += size

    def is_due(self) -> bool:
        """Tell whether the buffer should be written now (count, size or age)."""
        if not self._buffer:
            return False
        age = time.monotonic() - (self._oldest or time.monotonic())
        return (
            len(self._buffer) >= self.max_records
            or self._bytes >= self.max_bytes
            or age >= self.max_age_secs
        )

    def flush(self, *, force: bool = False) -> int:
        """Write the buffer if due (or ``force``); return how many records were written."""
        if not self._buffer or not (force or self.is_due()):
            return 0
        batch = self._buffer
        self.write(batch)  # raises: the buffer is kept and offered again
        self._buffer, self._bytes, self._oldest = [], 0, None
        return len(batch)

    @property
    def buffered(self) -> int:
        """Return how many records wait in the buffer."""
        return len(self._buffer)

    def write(self, batch: Sequence[R]) -> None:
        """Write one batch durably (implemented by each sink)."""
        raise NotImplementedError
