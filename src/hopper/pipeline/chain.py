"""Chain: named stages run in order, with each stage's counters and named outputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hopper.events.model import Rejection, RejectReason
from hopper.observe.metrics import HopperMetrics
from hopper.pipeline.stage import ANY_ORIGIN, Origin, Stage

PASSED = "passed"


@dataclass(slots=True)
class ChainResult:
    """A chain's outputs for one payload: passed, rejected (duplicates too), routed."""

    passed: list[Any]
    rejected: list[Rejection] = field(default_factory=list)
    routed: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def duplicates(self) -> list[Rejection]:
        """Return the rejections that are duplicates."""
        return [r for r in self.rejected if r.reason is RejectReason.DUPLICATE]

    def output(self, name: str) -> list[Any]:
        """Return the records of a named output (``passed`` or a route)."""
        return self.passed if name == PASSED else self.routed.get(name, [])


class Chain:
    """Runs payloads through stages, counting per stage (received = sent + rejected + routed)."""

    def __init__(self, stages: Sequence[Stage[Any, Any]], metrics: HopperMetrics) -> None:
        self.stages = list(stages)
        self._counters = [metrics.component(stage.name) for stage in self.stages]

    @property
    def names(self) -> list[str]:
        """Return the stage names, in order."""
        return [stage.name for stage in self.stages]

    def run(self, payload: Any, origin: Origin = ANY_ORIGIN) -> ChainResult:
        """Process one payload from ``origin``; every stage's rejections are gathered."""
        records: list[Any] = [payload]
        out = ChainResult([])
        for stage, counters in zip(self.stages, self._counters, strict=True):
            result = stage.process(records, origin)
            routed = sum(len(r) for r in result.routed.values())
            counters.received.inc(len(result.passed) + len(result.rejected) + routed)
            counters.sent.inc(len(result.passed) + routed)
            for rejection in result.rejected:
                counters.rejected(rejection.reason.value)
            out.rejected += result.rejected
            for name, routed_records in result.routed.items():
                out.routed.setdefault(name, []).extend(routed_records)
            records = result.passed
        out.passed = records
        return out
