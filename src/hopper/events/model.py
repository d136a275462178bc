"""The canonical device event, rejections and their reason codes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class RejectReason(StrEnum):
    """Why an event (or a whole payload) was not stored; documented in docs/events.md."""

    UNDECODABLE = "undecodable"
    MISSING_FIELD = "missing_field"
    TOO_OLD = "too_old"
    IN_FUTURE = "in_future"
    DUPLICATE = "duplicate"
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"


# Rejections that are recorded in reader_events_errors. Duplicates are not: the first
# copy is already stored, and redeliveries after a crash would flood the table.
RECORDED_REASONS = frozenset(set(RejectReason) - {RejectReason.DUPLICATE})

# Index of a rejection that concerns the whole payload rather than one event in it.
WHOLE_PAYLOAD = -1


@dataclass(slots=True)
class Event:
    """A decoded device event with its exact raw bytes and content hash."""

    index: int
    raw: bytes
    hash: bytes
    username: str
    device_id: str
    school_id: str
    app_time_ms: int
    app_version: str
    platform: str
    session_id: str
    event_type: str | None
    payload: dict[str, Any] = field(default_factory=dict)
    payload_json: bytes = b"{}"  # the payload as JSON, serialised once for store and channels

    @property
    def dedup_key(self) -> tuple[int, bytes]:
        """Time-prefixed identity: same raw bytes always give the same key."""
        return (self.app_time_ms, self.hash)


@dataclass(slots=True, frozen=True)
class Rejection:
    """An event or payload that was refused, with its reason code and raw bytes."""

    index: int
    reason: RejectReason
    detail: str
    raw: bytes

    def as_result(self) -> dict[str, Any]:
        """Describe this rejection for a client (never includes the raw bytes)."""
        return {"index": self.index, "reason": self.reason.value, "detail": self.detail}
