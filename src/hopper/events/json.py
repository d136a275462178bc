"""The JSON form of an accepted event, as published on the ``lp-events`` channel."""

from __future__ import annotations

from typing import Any

import orjson

from hopper.events.model import Event


def event_to_dict(event: Event, received_ms: int) -> dict[str, Any]:
    """Return the JSON-ready form of an event."""
    return {
        "type": event.event_type,
        "username": event.username,
        "device_id": event.device_id,
        "school_id": event.school_id,
        "app_time_ms": event.app_time_ms,
        "received_ms": received_ms,
        "app_version": event.app_version,
        "platform": event.platform,
        "session_id": event.session_id,
        "hash": event.hash.hex(),
        "payload": orjson.Fragment(event.payload_json),
    }


def event_to_json(event: Event, received_ms: int) -> bytes:
    """Serialise an event to JSON bytes."""
    return orjson.dumps(event_to_dict(event, received_ms))
