"""Decode stage: transport payloads (``EventBatch`` bytes) to events."""

from __future__ import annotations

from collections.abc import Sequence

from hopper.events.model import Event
from hopper.events.protobuf import decode_batch
from hopper.pipeline.stage import ANY_ORIGIN, Origin, StageResult


class Decode:
    """Turns each payload into events; undecodable bytes become rejections."""

    name = "decode"

    def __init__(self, *, max_events: int | None = None) -> None:
        self._max_events = max_events

    def process(self, batch: Sequence[bytes], origin: Origin = ANY_ORIGIN) -> StageResult[Event]:
        """Decode every payload of the batch."""
        result: StageResult[Event] = StageResult([])
        for payload in batch:
            events, rejected = decode_batch(payload, max_events=self._max_events)
            result.passed.extend(events)
            result.rejected.extend(rejected)
        return result
