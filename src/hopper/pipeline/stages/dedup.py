"""Dedup stage: drop repeats of the same raw bytes inside one batch.

Repeats across batches are caught by the store, whose time-prefixed key is committed in
the same transaction as the event (see ``EventStore.commit``).
"""

from __future__ import annotations

from collections.abc import Sequence

from hopper.events.model import Event, Rejection, RejectReason
from hopper.pipeline.stage import ANY_ORIGIN, Origin, StageResult


class Dedup:
    """Passes the first copy of each event in a batch; later copies are duplicates."""

    name = "dedup"

    def process(self, batch: Sequence[Event], origin: Origin = ANY_ORIGIN) -> StageResult[Event]:
        """Keep first occurrences by content key."""
        seen: set[tuple[int, bytes]] = set()
        result: StageResult[Event] = StageResult([])
        for event in batch:
            key = event.dedup_key
            if key in seen:
                result.rejected.append(
                    Rejection(
                        event.index, RejectReason.DUPLICATE, "repeated in the same batch", event.raw
                    )
                )
            else:
                seen.add(key)
                result.passed.append(event)
        return result
