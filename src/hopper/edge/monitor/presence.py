"""A device's presence: what it last showed, when it was last heard from, and its state.

Everything a device reports is hostile input: text is cut to ``MAX_TEXT_CHARS``, numbers
are range-checked, and a device id longer than ``MAX_DEVICE_ID_CHARS`` is not tracked.
Times are the node's receive times (``received_ms``), never the tablets' clocks; the
tablets' app times only order what they report.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from hopper.config import MonitorSettings
from hopper.events.model import Event

MAX_TEXT_CHARS = 100
MAX_DEVICE_ID_CHARS = 128
CAM_STATUS = "cam_status"


class DeviceState(StrEnum):
    """Where a device stands, from the time since it was last heard from."""

    ONLINE = "online"  # heard from recently, screen on, something changing
    IDLE = "idle"  # heard from recently, but screen off or nothing changing
    STALE = "stale"  # missed heartbeats (``monitor.stale_after_missed``)
    OFFLINE = "offline"  # missed more (``monitor.offline_after_missed``)


@dataclass(frozen=True, slots=True)
class PresenceRules:
    """The thresholds that turn times into a state (from ``MonitorSettings``)."""

    stale_after_ms: int
    offline_after_ms: int
    idle_after_ms: int
    forget_after_ms: int

    @classmethod
    def from_settings(cls, settings: MonitorSettings) -> PresenceRules:
        """Derive the thresholds from the monitor's settings."""
        interval_ms = settings.heartbeat_interval_secs * 1000
        return cls(
            stale_after_ms=round(interval_ms * settings.stale_after_missed),
            offline_after_ms=round(interval_ms * settings.offline_after_missed),
            idle_after_ms=round(settings.idle_after_secs * 1000),
            forget_after_ms=settings.forget_after_secs * 1000,
        )

    def state(self, device: DevicePresence, now_ms: int) -> DeviceState:
        """Return the state of ``device`` at ``now_ms``."""
        silent = now_ms - device.last_seen_ms
        if silent > self.offline_after_ms:
            return DeviceState.OFFLINE
        if silent > self.stale_after_ms:
            return DeviceState.STALE
        if device.screen_on is False or now_ms - device.last_activity_ms > self.idle_after_ms:
            return DeviceState.IDLE
        return DeviceState.ONLINE


@dataclass(slots=True)
class Sighting:
    """One event of a device, as the monitor needs it (from the writer, Redis or the store)."""

    device_id: str
    username: str
    event_type: str
    app_time_ms: int
    received_ms: int
    app_version: str
    payload: dict[str, Any]


def _text(value: object) -> str | None:
    """Return a non-empty string, cut to ``MAX_TEXT_CHARS``; None otherwise."""
    if not isinstance(value, str) or not value:
        return None
    return value[:MAX_TEXT_CHARS]


def _int(value: object, low: int, high: int) -> int | None:
    """Return an int within [low, high]; None otherwise (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return None
    return value


def sighting_from_event(event: Event, received_ms: int) -> Sighting | None:
    """Return the sighting of a committed event (None: its device id is unusable)."""
    if not event.device_id or len(event.device_id) > MAX_DEVICE_ID_CHARS:
        return None
    return Sighting(
        event.device_id,
        event.username[:MAX_TEXT_CHARS],
        event.event_type or "",
        event.app_time_ms,
        received_ms,
        event.app_version[:MAX_TEXT_CHARS],
        event.payload,
    )


def sighting_from_json(message: bytes) -> Sighting | None:
    """Return the sighting of an ``lp-events`` message (None: not a usable event)."""
    try:
        obj = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    device_id, username, kind = obj.get("device_id"), obj.get("username"), obj.get("type")
    app_time, received = obj.get("app_time_ms"), obj.get("received_ms")
    payload = obj.get("payload")
    if not isinstance(device_id, str) or not device_id or len(device_id) > MAX_DEVICE_ID_CHARS:
        return None
    if not isinstance(username, str) or not isinstance(kind, str):
        return None
    if _int(app_time, 0, 2**62) is None or _int(received, 0, 2**62) is None:
        return None
    version = obj.get("app_version")
    return Sighting(
        device_id,
        username[:MAX_TEXT_CHARS],
        kind[:MAX_TEXT_CHARS],
        app_time,  # type: ignore[arg-type]  # checked by _int above
        received,  # type: ignore[arg-type]
        version[:MAX_TEXT_CHARS] if isinstance(version, str) else "",
        payload if isinstance(payload, dict) else {},
    )


def sighting_from_row(
    device_id: str,
    username: str,
    event_type: str,
    app_time_ms: int,
    received_ms: int,
    app_version: str,
    payload: object,
) -> Sighting | None:
    """Return the sighting of a stored ``reader_events`` row (payload as JSON text or dict)."""
    if not device_id or len(device_id) > MAX_DEVICE_ID_CHARS:
        return None
    if isinstance(payload, str | bytes):
        try:
            payload = orjson.loads(payload)
        except orjson.JSONDecodeError:
            payload = {}
    return Sighting(
        device_id,
        username[:MAX_TEXT_CHARS],
        event_type,
        int(app_time_ms),
        int(received_ms),
        app_version[:MAX_TEXT_CHARS],
        payload if isinstance(payload, dict) else {},
    )


# The fields of a tile that a device's events set, in the order tiles list them.
REPORTED_FIELDS = ("app", "book_id", "page", "screen_on", "battery_pct", "app_version")


@dataclass(slots=True)
class DevicePresence:
    """What the monitor knows of one device (mutable; owned by the board, under its lock)."""

    device_id: str
    username: str = ""
    app: str | None = None
    book_id: str | None = None
    page: int | None = None
    screen_on: bool | None = None
    battery_pct: int | None = None
    app_version: str | None = None
    last_seen_ms: int = 0
    last_activity_ms: int = 0
    last_app_time_ms: int = -1  # newest app time applied: older reports do not undo newer
    state: DeviceState = DeviceState.OFFLINE
    # The 1-per-interval limit: when a change was last emitted, and what waits for the next.
    last_emit_ms: int = -(2**62)
    held: dict[str, Any] | None = None
    held_received_ms: int | None = None
    held_left: frozenset[str] = frozenset()
    classes: frozenset[str] = frozenset()

    def apply(self, sighting: Sighting) -> dict[str, Any]:
        """Apply one sighting; return the reported fields it changed (and ``last_seen_ms``)."""
        changed: dict[str, Any] = {}
        if sighting.received_ms > self.last_seen_ms:
            self.last_seen_ms = sighting.received_ms
            changed["last_seen_ms"] = sighting.received_ms
        if sighting.app_time_ms < self.last_app_time_ms:
            return changed  # an older report (a backlog sent late): it only proves presence
        self.last_app_time_ms = sighting.app_time_ms
        if sighting.username and sighting.username != self.username:
            self.username = sighting.username
            changed["username"] = sighting.username
        reported = _reported(sighting)
        if sighting.app_version:
            reported["app_version"] = sighting.app_version
        for name, value in reported.items():
            if getattr(self, name) != value:
                setattr(self, name, value)
                changed[name] = value
        # Activity: anything but a heartbeat, or a heartbeat that shows something new.
        if sighting.event_type != CAM_STATUS or any(
            name in changed for name in ("app", "book_id", "page", "screen_on")
        ):
            self.last_activity_ms = max(self.last_activity_ms, sighting.received_ms)
        return changed


def _reported(sighting: Sighting) -> dict[str, Any]:
    """Return the tile fields an event reports (only those its type carries)."""
    p = sighting.payload
    kind = sighting.event_type
    if kind == CAM_STATUS:
        return {
            "app": _text(p.get("foreground_app")),
            "book_id": _text(p.get("book_id")),
            "page": _int(p.get("page"), 1, 1_000_000),
            "screen_on": p.get("screen_on") if isinstance(p.get("screen_on"), bool) else None,
            "battery_pct": _int(p.get("battery_pct"), 0, 100),
        }
    if kind == "page_viewed":
        return {"book_id": _text(p.get("book_id")), "page": _int(p.get("page"), 1, 1_000_000)}
    if kind == "book_opened":
        return {"book_id": _text(p.get("book_id")), "page": None}
    if kind == "book_closed":
        return {"book_id": None, "page": None}
    if kind == "resource_opened" and _text(p.get("book_id")):
        return {"book_id": _text(p.get("book_id"))}
    return {}


@dataclass(frozen=True, slots=True)
class DeviceTile:
    """One tablet as a page shows it: the student on it, what it shows, its state."""

    device_id: str
    username: str
    student_id: str | None
    display_name: str | None
    state: DeviceState
    app: str | None
    book_id: str | None
    book_title: str | None
    page: int | None
    page_count: int | None
    screen_on: bool | None
    battery_pct: int | None
    app_version: str | None
    last_seen_ms: int

    def as_dict(self) -> dict[str, Any]:
        """Return the tile as JSON-ready fields."""
        return {
            "device_id": self.device_id,
            "username": self.username,
            "student_id": self.student_id,
            "display_name": self.display_name,
            "state": self.state.value,
            "app": self.app,
            "book_id": self.book_id,
            "book_title": self.book_title,
            "page": self.page,
            "page_count": self.page_count,
            "screen_on": self.screen_on,
            "battery_pct": self.battery_pct,
            "app_version": self.app_version,
            "last_seen_ms": self.last_seen_ms,
        }
