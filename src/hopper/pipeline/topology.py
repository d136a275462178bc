"""Topologies built from the config: a chain of named stages with counters per stage."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hopper.clock import Clock
from hopper.config import HopperSettings
from hopper.errors import ConfigError
from hopper.events.model import Event
from hopper.events.protobuf import EVENT_TYPES
from hopper.observe.metrics import HopperMetrics
from hopper.pipeline.stage import ANY_ORIGIN, Origin, Stage, StageResult
from hopper.pipeline.stages import Authorize, Decode, Dedup, Validate

StageFactory = Callable[[HopperSettings, Clock], Stage[Any, Any]]

# Every stage the config may name, in the order the edge path runs them.
EDGE_STAGES: dict[str, StageFactory] = {
    "decode": lambda settings, clock: Decode(max_events=settings.ingest.max_batch_events),
    "authorize": lambda settings, clock: Authorize(),
    "validate": lambda settings, clock: Validate(
        clock,
        max_event_age_secs=settings.ingest.max_event_age_secs,
        max_clock_skew_secs=settings.ingest.max_clock_skew_secs,
    ),
    "dedup": lambda settings, clock: Dedup(),
}
EDGE_SINKS = ("store", "protos", "lp-events")


class EdgePipeline:
    """Runs transport payloads through the edge stages, counting per stage."""

    def __init__(self, stages: Sequence[Stage[Any, Any]], metrics: HopperMetrics) -> None:
        self.stages = list(stages)
        self._counters = [metrics.component(stage.name) for stage in self.stages]

    def run(self, payload: bytes, origin: Origin = ANY_ORIGIN) -> StageResult[Event]:
        """Process one payload from ``origin``; every stage's rejections are gathered."""
        records: list[Any] = [payload]
        rejected = []
        for stage, counters in zip(self.stages, self._counters, strict=True):
            result = stage.process(records, origin)
            received = len(result.passed) + len(result.rejected)
            counters.received.inc(received)
            counters.sent.inc(len(result.passed))
            for rejection in result.rejected:
                counters.rejected(rejection.reason.value)
            rejected += result.rejected
            records = result.passed
        return StageResult(records, rejected)


def check_edge_topology(settings: HopperSettings) -> list[str]:
    """Return the problems of the configured edge topology (empty when it is sound)."""
    topology = settings.pipeline.edge
    problems = [
        f"pipeline.edge.stages: unknown stage {name!r} (known: {', '.join(EDGE_STAGES)})"
        for name in topology.stages
        if name not in EDGE_STAGES
    ]
    problems += [
        f"pipeline.edge.sinks: unknown sink {name!r} (known: {', '.join(EDGE_SINKS)})"
        for name in topology.sinks
        if name not in EDGE_SINKS
    ]
    if len(set(topology.stages)) != len(topology.stages):
        problems.append("pipeline.edge.stages: a stage is listed twice")
    if "authorize" not in topology.stages and (
        settings.auth.mode == "tokens" or settings.mqtt.require_topic_school
    ):
        problems.append(
            "pipeline.edge.stages: 'authorize' is required when auth.mode = \"tokens\" or "
            "mqtt.require_topic_school is set (it enforces the schools of each sender)"
        )
    types = settings.pubsub.lp_events_types
    if types is not None:
        if not types:
            problems.append("pubsub.lp_events_types: empty list; leave it unset to publish all")
        problems += [
            f"pubsub.lp_events_types: unknown event type {name!r} (known: {', '.join(EVENT_TYPES)})"
            for name in types
            if name not in EVENT_TYPES
        ]
    return problems


def build_edge_pipeline(
    settings: HopperSettings, clock: Clock, metrics: HopperMetrics
) -> EdgePipeline:
    """Build the edge pipeline the config declares; raise ConfigError if it is unsound."""
    problems = check_edge_topology(settings)
    if problems:
        raise ConfigError("; ".join(problems))
    stages = [EDGE_STAGES[name](settings, clock) for name in settings.pipeline.edge.stages]
    return EdgePipeline(stages, metrics)
