"""The canonical device event, rejections and their reason codes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
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
    TOO_MANY_EVENTS = "too_many_events"
    SCHOOL_NOT_ALLOWED = "school_not_allowed"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"


def content_hash(raw: bytes) -> bytes:
    """Return the 16-byte content hash of raw bytes (SHA-256 prefix): the dedup identity."""
    return hashlib.sha256(raw).digest()[:16]


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
    """An event or payload that was refused, with its reason code and raw bytes.

    ``raw`` may be only a prefix of the refused bytes: then ``size`` is their full length
    and ``raw_hash`` their content hash (None when the bytes were never all read).
    """

    index: int
    reason: RejectReason
    detail: str
    raw: bytes
    size: int | None = None
    raw_hash: bytes | None = None

    @property
    def full_size(self) -> int:
        """Return the length of the refused bytes, of which ``raw`` may be a prefix."""
        return len(self.raw) if self.size is None else self.size

    def bounded(self, max_bytes: int) -> Rejection:
        """Return this rejection keeping at most ``max_bytes`` of raw bytes, with size and hash."""
        if self.size is not None:
            return self if len(self.raw) <= max_bytes else replace(self, raw=self.raw[:max_bytes])
        return replace(
            self, raw=self.raw[:max_bytes], size=len(self.raw), raw_hash=content_hash(self.raw)
        )

    def as_result(self) -> dict[str, Any]:
        """Describe this rejection for a client (never includes the raw bytes)."""
        return {"index": self.index, "reason": self.reason.value, "detail": self.detail}
