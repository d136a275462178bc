"""Decode stage: transport payloads (``EventBatch`` bytes) to events."""

from __future__ import annotations

from collections.abc import Sequence

from hopper.events.model import Event
from hopper.events.protobuf import decode_batch
from hopper.pipeline.stage import StageResult


class Decode:
    """Turns each payload into events; undecodable bytes become rejections."""

    name = "decode"

    def process(self, batch: Sequence[bytes]) -> StageResult[Event]:
        """Decode every payload of the batch."""
        result: StageResult[Event] = StageResult([])
        for payload in batch:
            events, rejected = decode_batch(payload)
            result.passed.extend(events)
            result.rejected.extend(rejected)
        return result
