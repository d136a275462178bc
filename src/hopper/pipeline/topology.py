"""Topologies built from the config: sources → a chain of named stages → durable and live sinks.

Every component is named in the config and built from a registry here, so that no code
elsewhere needs to know a sink or stage by name:

    stages   decode, authorize, validate, dedup                      (``STAGES``)
    sinks    store, topic:NAME (durable); protos, lp-events, monitor (live: ``LIVE_SINKS``)
    sources  http, websocket, mqtt (``hopper serve``); topic:NAME (``hopper worker``)

``check_topologies`` lists what is wrong with the declared topologies, for start-up and
``hopper config check``; ``build_topology`` turns one into a ``Topology`` over the
``Resources`` (event store, channels, topic log) that the process shares between them.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hopper.clock import Clock, SystemClock
from hopper.config import HopperSettings, TopologySettings
from hopper.errors import ConfigError
from hopper.events.protobuf import EVENT_TYPES
from hopper.observe.metrics import HopperMetrics
from hopper.pipeline.chain import Chain
from hopper.pipeline.stage import Stage
from hopper.pipeline.stages import Authorize, Decode, Dedup, Validate
from hopper.pubsub import Channels, ChannelSink, open_channels, render_json, render_raw
from hopper.sinks.base import DurableSink, LiveSink
from hopper.store import EventStore, open_event_store

if TYPE_CHECKING:
    from hopper.pipeline.topics.base import TopicLog

logger = logging.getLogger(__name__)

StageFactory = Callable[[HopperSettings, Clock], Stage[Any, Any]]

# Every stage the config may name.
STAGES: dict[str, StageFactory] = {
    "decode": lambda settings, clock: Decode(max_events=settings.ingest.max_batch_events),
    "authorize": lambda settings, clock: Authorize(),
    "validate": lambda settings, clock: Validate(
        clock,
        max_event_age_secs=settings.ingest.max_event_age_secs,
        max_clock_skew_secs=settings.ingest.max_clock_skew_secs,
    ),
    "dedup": lambda settings, clock: Dedup(),
}
DURABLE_SINKS = ("store", "topic")
# Every live sink the config may name: the import path of its factory, called as
# ``factory(name, resources)`` once per process. Loaded only when a topology names it, like
# the backends' registries, so a part above the pipeline (the edge's live monitor) plugs in
# here without this module importing it.
LIVE_SINKS: dict[str, str] = {
    "protos": "hopper.pipeline.topology:build_channel_sink",
    "lp-events": "hopper.pipeline.topology:build_channel_sink",
    "monitor": "hopper.edge.monitor:build_monitor_sink",
}
SERVED_SOURCES = ("http", "websocket", "mqtt")  # run by `hopper serve`
TOPIC = "topic"  # `topic:NAME`, as a source (run by `hopper worker`) or a durable sink


def split_component(name: str) -> tuple[str, str | None]:
    """Split ``topic:edge-events`` into ``("topic", "edge-events")``; others have no argument."""
    kind, sep, argument = name.partition(":")
    return (kind, argument) if sep else (name, None)


def _check_one(name: str, topology: TopologySettings) -> list[str]:
    where = f"pipeline.{name}"
    problems = []
    for source in topology.sources:
        kind, arg = split_component(source)
        if kind == TOPIC and not arg:
            problems.append(f"{where}.sources: 'topic:' needs a topic name (topic:NAME)")
        elif kind != TOPIC and (kind not in SERVED_SOURCES or arg is not None):
            known = ", ".join((*SERVED_SOURCES, "topic:NAME"))
            problems.append(f"{where}.sources: unknown source {source!r} (known: {known})")
    served = [s for s in topology.sources if split_component(s)[0] in SERVED_SOURCES]
    if served and len(served) != len(topology.sources):
        problems.append(
            f"{where}.sources: topic sources run in `hopper worker`, the others in "
            "`hopper serve`: put them in separate topologies"
        )
    problems += [
        f"{where}.stages: unknown stage {stage!r} (known: {', '.join(STAGES)})"
        for stage in topology.stages
        if stage not in STAGES
    ]
    if topology.stages[0] != "decode":
        problems.append(f"{where}.stages: the first stage must be 'decode'")
    if len(set(topology.stages)) != len(topology.stages):
        problems.append(f"{where}.stages: a stage is listed twice")
    durable = 0
    for sink in topology.sinks:
        kind, arg = split_component(sink)
        if kind == TOPIC and arg:
            durable += 1
        elif kind == "store" and arg is None:
            durable += 1
        elif kind not in LIVE_SINKS or arg is not None:
            known = ", ".join(("store", "topic:NAME", *LIVE_SINKS))
            problems.append(f"{where}.sinks: unknown sink {sink!r} (known: {known})")
    if not durable:
        problems.append(
            f"{where}.sinks: no durable sink: 'store' (the durable sink) is required, or a "
            "'topic:NAME'; the acknowledgement waits for the durable sinks"
        )
    if len(set(topology.sinks)) != len(topology.sinks):
        problems.append(f"{where}.sinks: a sink is listed twice")
    return problems


def check_topologies(settings: HopperSettings) -> list[str]:
    """Return the problems of the declared topologies (empty when they are sound)."""
    topologies = settings.pipeline.topologies()
    problems: list[str] = []
    written: set[str] = set()
    read: set[str] = set()
    for name, topology in topologies.items():
        problems += _check_one(name, topology)
        written |= {a for k, a in map(split_component, topology.sinks) if k == TOPIC and a}
        read |= {a for k, a in map(split_component, topology.sources) if k == TOPIC and a}
    external = set(settings.topics.external)
    problems += [
        f"topic {topic!r} is written but read by no topology here; list it in "
        "topics.external if another process reads it"
        for topic in sorted(written - read - external)
    ]
    problems += [
        f"topic {topic!r} is read but written by no topology here; list it in "
        "topics.external if another process writes it"
        for topic in sorted(read - written - external)
    ]
    edge = topologies["edge"]
    if "authorize" not in edge.stages and (
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


def build_chain(
    settings: HopperSettings, stages: list[str], clock: Clock, metrics: HopperMetrics
) -> Chain:
    """Build a chain of named stages."""
    return Chain([STAGES[name](settings, clock) for name in stages], metrics)


@dataclass
class Resources:
    """The backends one process shares between its topologies, opened on first use."""

    settings: HopperSettings
    metrics: HopperMetrics
    clock: Clock = field(default_factory=SystemClock)
    _store: EventStore | None = None
    _channels: Channels | None = None
    _topics: TopicLog | None = None
    _channel_sinks: dict[str, ChannelSink] = field(default_factory=dict)
    _live_sinks: dict[str, LiveSink] = field(default_factory=dict)

    def event_store(self) -> EventStore:
        """Return the writer's event store, migrated."""
        if self._store is None:
            self._store = open_event_store(self.settings.store)
            self._store.migrate()
        return self._store

    def channels(self) -> Channels:
        """Return the pub/sub channels backend."""
        if self._channels is None:
            self._channels = open_channels(self.settings.pubsub)
        return self._channels

    def topic_log(self) -> TopicLog:
        """Return the topic log backend."""
        if self._topics is None:
            from hopper.pipeline.topics import open_topic_log

            self._topics = open_topic_log(self.settings.topics)
        return self._topics

    def channel_sink(self, name: str) -> ChannelSink:
        """Return the live sink of a channel (one per process, shared by topologies)."""
        found = self._channel_sinks.get(name)
        if found is not None:
            return found
        pubsub = self.settings.pubsub
        if name == "protos":
            sink = ChannelSink(
                name, self.channels(), pubsub.protos_channel, render_raw, self.metrics,
                message_format="protobuf", max_events=pubsub.buffer_max_events,
            )  # fmt: skip
        else:
            types = frozenset(pubsub.lp_events_types) if pubsub.lp_events_types else None
            sink = ChannelSink(
                name, self.channels(), pubsub.lp_events_channel, render_json(types),
                self.metrics, message_format="json", max_events=pubsub.buffer_max_events,
            )  # fmt: skip
        self._channel_sinks[name] = sink
        return sink

    def live_sink(self, name: str) -> LiveSink:
        """Return the live sink ``name`` of ``LIVE_SINKS`` (one per process, shared)."""
        found = self._live_sinks.get(name)
        if found is None:
            module, _, factory = LIVE_SINKS[name].partition(":")
            build: LiveSinkFactory = getattr(importlib.import_module(module), factory)
            found = self._live_sinks[name] = build(name, self)
        return found

    @property
    def channel_sinks(self) -> dict[str, ChannelSink]:
        """Return the channel sinks built so far, by sink name."""
        return dict(self._channel_sinks)

    def close(self) -> None:
        """Close every backend opened."""
        if self._store is not None:
            self._store.close()
        if self._channels is not None:
            self._channels.close()
        if self._topics is not None:
            self._topics.close()


LiveSinkFactory = Callable[[str, Resources], LiveSink]


def build_channel_sink(name: str, resources: Resources) -> ChannelSink:
    """Build the live sink of channel ``protos`` or ``lp-events`` (a ``LIVE_SINKS`` factory)."""
    return resources.channel_sink(name)


def build_sink(name: str, resources: Resources) -> DurableSink | LiveSink:
    """Build the sink a topology names."""
    kind, arg = split_component(name)
    if kind == "store":
        return resources.event_store()
    if kind == TOPIC and arg:
        from hopper.pipeline.topics.sink import TopicSink

        return TopicSink(resources.topic_log(), arg, resources.settings.topics.partitions)
    return resources.live_sink(kind)


@dataclass
class Topology:
    """A built topology: its chain and its sinks (the first durable one listed is its record)."""

    name: str
    settings: TopologySettings
    chain: Chain
    sinks: list[DurableSink]
    live_sinks: list[LiveSink]


def build_topology(
    settings: HopperSettings,
    name: str,
    clock: Clock,
    metrics: HopperMetrics,
    resources: Resources,
) -> Topology:
    """Build one declared topology; raise ConfigError if the topologies are unsound."""
    problems = check_topologies(settings)
    if problems:
        raise ConfigError("; ".join(problems))
    topologies = settings.pipeline.topologies()
    if name not in topologies:
        raise ConfigError(f"no topology {name!r} in the config (known: {', '.join(topologies)})")
    topology = topologies[name]
    durable: list[DurableSink] = []
    live: list[LiveSink] = []
    for sink_name in topology.sinks:
        sink = build_sink(sink_name, resources)
        if split_component(sink_name)[0] in DURABLE_SINKS:
            durable.append(sink)  # type: ignore[arg-type]
        else:
            live.append(sink)  # type: ignore[arg-type]
    chain = build_chain(settings, topology.stages, clock, metrics)
    return Topology(name, topology, chain, durable, live)
