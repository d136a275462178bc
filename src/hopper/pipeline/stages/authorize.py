"""Authorize stage: events only for the schools the sender may write for."""

from __future__ import annotations

from collections.abc import Sequence

from hopper.events.model import Event, Rejection, RejectReason
from hopper.pipeline.stage import ANY_ORIGIN, Origin, StageResult


class Authorize:
    """Rejects events whose ``school_id`` is not one of the origin's schools."""

    name = "authorize"

    def process(self, batch: Sequence[Event], origin: Origin = ANY_ORIGIN) -> StageResult[Event]:
        """Pass events of allowed schools; the rest are rejected, the batch goes on."""
        schools = origin.schools
        if schools is None:
            return StageResult(list(batch))
        result: StageResult[Event] = StageResult([])
        for event in batch:
            if event.school_id in schools:
                result.passed.append(event)
            else:
                allowed = ", ".join(sorted(schools)[:10]) or "(none)"
                result.rejected.append(
                    Rejection(
                        event.index,
                        RejectReason.SCHOOL_NOT_ALLOWED,
                        f"school_id {event.school_id[:100]!r} is not one this sender may write "
                        f"for ({allowed})",
                        event.raw,
                    )
                )
        return result
