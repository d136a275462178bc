"""Validate stage: required fields and the accepted window of app time."""

from __future__ import annotations

from collections.abc import Sequence

from hopper.clock import Clock
from hopper.events.model import Event, Rejection, RejectReason
from hopper.pipeline.stage import ANY_ORIGIN, Origin, StageResult


class Validate:
    """Rejects events missing a required field or whose app time is out of the window."""

    name = "validate"

    def __init__(self, clock: Clock, *, max_event_age_secs: int, max_clock_skew_secs: int) -> None:
        self._clock = clock
        self._max_age_ms = max_event_age_secs * 1000
        self._max_skew_ms = max_clock_skew_secs * 1000

    def process(self, batch: Sequence[Event], origin: Origin = ANY_ORIGIN) -> StageResult[Event]:
        """Check each event against the rules, in the documented order."""
        now = self._clock.now_ms()
        oldest, latest = now - self._max_age_ms, now + self._max_skew_ms
        result: StageResult[Event] = StageResult([])
        for event in batch:
            missing = _missing_fields(event)
            if missing:
                result.rejected.append(
                    Rejection(
                        event.index,
                        RejectReason.MISSING_FIELD,
                        "missing required field(s): " + ", ".join(missing),
                        event.raw,
                    )
                )
            elif event.app_time_ms < oldest:
                age_h = (now - event.app_time_ms) / 3_600_000
                result.rejected.append(
                    Rejection(
                        event.index,
                        RejectReason.TOO_OLD,
                        f"app_time_ms {event.app_time_ms} is {age_h:.1f} h old, older than "
                        f"max_event_age_secs={self._max_age_ms // 1000}",
                        event.raw,
                    )
                )
            elif event.app_time_ms > latest:
                ahead_s = (event.app_time_ms - now) / 1000
                result.rejected.append(
                    Rejection(
                        event.index,
                        RejectReason.IN_FUTURE,
                        f"app_time_ms {event.app_time_ms} is {ahead_s:.0f} s ahead of the server, "
                        f"more than max_clock_skew_secs={self._max_skew_ms // 1000}",
                        event.raw,
                    )
                )
            else:
                result.passed.append(event)
        return result


def _missing_fields(event: Event) -> list[str]:
    missing = []
    if not event.username:
        missing.append("username")
    if not event.device_id:
        missing.append("device_id")
    if not event.app_time_ms:
        missing.append("app_time_ms")
    if event.event_type is None:
        missing.append("payload")
    return missing
