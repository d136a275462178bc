"""Worker: runs a topology whose sources are topics, as one member of their consumer groups.

``hopper worker NAME`` builds topology ``pipeline.NAME`` (sources ``topic:...``), joins
each topic's consumer group (``pipeline.NAME.group``, default the topology's name), and
runs the same intake and writer as the edge node: offsets are committed only after every
durable sink has the records. Several workers of one topology share the partitions.
"""

from __future__ import annotations

import logging
import threading

from hopper.clock import Clock, SystemClock
from hopper.config import HopperSettings
from hopper.errors import ConfigError
from hopper.ingest.intake import Intake
from hopper.ingest.topic import TopicEventSource
from hopper.observe.metrics import HopperMetrics
from hopper.pipeline.topology import TOPIC, Resources, build_topology, split_component

logger = logging.getLogger(__name__)


class Worker:
    """One process's member of a topic-fed topology."""

    def __init__(self, settings: HopperSettings, name: str, clock: Clock | None = None) -> None:
        self.settings = settings
        self.name = name
        self.clock = clock or SystemClock()
        self.metrics = HopperMetrics()
        self.resources = Resources(settings, self.metrics)
        self.topology = build_topology(settings, name, self.clock, self.metrics, self.resources)
        topics = [split_component(s) for s in self.topology.settings.sources]
        if not all(kind == TOPIC for kind, _ in topics):
            raise ConfigError(
                f"pipeline.{name}.sources: `hopper worker` runs topologies fed by topics "
                "(topic:NAME); the others run in `hopper serve`"
            )
        self.intake = Intake(
            self.topology.chain,
            self.topology.sinks,
            self.topology.live_sinks,
            self.metrics,
            self.clock,
            max_batches=settings.ingest.queue_max_batches,
            max_bytes=settings.ingest.queue_max_bytes,
            commit_max_events=settings.ingest.commit_max_events,
            max_payload_bytes=settings.ingest.max_body_bytes,
            error_raw_max_bytes=settings.ingest.error_raw_max_bytes,
            ack_max_results=settings.ingest.ack_max_results,
        )
        group = self.topology.settings.group or name
        log = self.resources.topic_log()
        self.sources = [
            TopicEventSource(self.intake, log, topic, group) for _, topic in topics if topic
        ]

    def start(self) -> None:
        """Start the live sinks, the writer and the consumers."""
        for sink in self.topology.live_sinks:
            sink.start()
        self.intake.start()
        for source in self.sources:
            source.start()
        logger.info(
            "Worker %s started: %s -> %s -> %s (group %s, topics %s).",
            self.name,
            " + ".join(self.topology.settings.sources),
            " -> ".join(self.topology.chain.names),
            ", ".join(self.topology.settings.sinks),
            self.topology.settings.group or self.name,
            self.settings.topics.backend,
        )

    def run_until(self, stop: threading.Event, *, report_secs: float = 10.0) -> None:
        """Run until ``stop`` is set, logging progress now and then, then stop cleanly."""
        self.start()
        try:
            while not stop.wait(report_secs):
                consumed = sum(s.consumed for s in self.sources)
                committed = sum(s.committed for s in self.sources)
                logger.info(
                    "Worker %s: %d records consumed, %d committed.", self.name, consumed, committed
                )
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop consuming (committing what is in flight), then the writer, then close."""
        for source in self.sources:
            source.stop()
        self.intake.stop()
        for sink in self.topology.live_sinks:
            sink.stop()
        self.resources.close()  # the sinks' backends: store, topic log, channels
