"""Rows of the event tables, built the same way for every backend."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hopper.events.model import Event, Rejection, content_hash
from hopper.sinks.base import PendingWrite

READER_EVENT_COLUMNS = (
    "app_time_ms",
    "received_ms",
    "username",
    "device_id",
    "school_id",
    "app_version",
    "platform",
    "session_id",
    "event_type",
    "book_id",
    "page",
    "payload",
    "hash",
)
RAW_EVENT_COLUMNS = ("app_time_ms", "hash", "received_ms", "raw")
ERROR_COLUMNS = ("received_ms", "source", "reason", "detail", "raw", "raw_size", "raw_hash")


def reader_event_row(event: Event, received_ms: int) -> tuple[Any, ...]:
    """Return the ``reader_events`` row of an event (payload as JSON text)."""
    payload = event.payload
    return (
        event.app_time_ms,
        received_ms,
        event.username,
        event.device_id,
        event.school_id,
        event.app_version,
        event.platform,
        event.session_id,
        event.event_type,
        payload.get("book_id") or None,
        payload.get("page"),
        event.payload_json.decode(),
        event.hash,
    )


def error_row(write: PendingWrite, rejection: Rejection) -> tuple[Any, ...]:
    """Return the ``reader_events_errors`` row of a rejection."""
    return (
        write.received_ms,
        write.source,
        rejection.reason.value,
        rejection.detail,
        rejection.raw,
        rejection.full_size,
        rejection.raw_hash if rejection.size is not None else content_hash(rejection.raw),
    )


@dataclass(slots=True)
class CommitRows:
    """The rows one commit writes after the raw insert decided which events are new."""

    stored: list[list[Event]]  # per write, its new events
    reader: list[tuple[Any, ...]]
    errors: list[tuple[Any, ...]]


def rows_after_raw_insert(
    writes: Sequence[PendingWrite],
    inserted: set[tuple[int, bytes]],
    *,
    reader_row: Callable[[Event, int], tuple[Any, ...]] = reader_event_row,
    rejection_row: Callable[[PendingWrite, Rejection], tuple[Any, ...]] = error_row,
) -> CommitRows:
    """Split each write's events into new ones (key in ``inserted``) and duplicates."""
    rows = CommitRows([], [], [])
    for w in writes:
        new: list[Event] = []
        for e in w.events:
            key = (e.app_time_ms, e.hash)
            if key in inserted:
                inserted.discard(key)  # a later copy in this commit is a duplicate
                new.append(e)
                rows.reader.append(reader_row(e, w.received_ms))
        rows.stored.append(new)
        rows.errors += [rejection_row(w, r) for r in w.rejections]
    return rows
