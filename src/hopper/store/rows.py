"""Rows of the event tables, built the same way for every backend."""

from __future__ import annotations

from typing import Any

from hopper.events.model import Event

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
ERROR_COLUMNS = ("received_ms", "source", "reason", "detail", "raw")


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
