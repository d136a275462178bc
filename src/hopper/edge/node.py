"""EdgeNode: the running parts of one school's node, wired from the settings."""

from __future__ import annotations

import logging
import shutil
import threading
from typing import TYPE_CHECKING

from hopper.access import Authenticator
from hopper.clock import Clock, SystemClock
from hopper.config import HopperSettings
from hopper.edge.monitor import MonitorBoard, MonitorSink
from hopper.edge.server import ConnectionGuard
from hopper.errors import HopperError
from hopper.ingest.intake import Intake
from hopper.observe.metrics import HopperMetrics
from hopper.pipeline.topology import Resources, build_topology
from hopper.pubsub import Channels, ChannelSink
from hopper.store import EventStore, open_event_store

if TYPE_CHECKING:
    from hopper.edge.api.process import ApiProcess
    from hopper.ingest.mqtt import MqttEventSource

logger = logging.getLogger(__name__)


class EdgeNode:
    """The edge topology (chain, sinks, intake) and the threaded sources of one edge node."""

    def __init__(self, settings: HopperSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = HopperMetrics()
        self.resources = Resources(settings, self.metrics, self.clock)
        self.topology = build_topology(settings, "edge", self.clock, self.metrics, self.resources)
        # The node's own store (tokens live there too), whether or not it is a sink.
        self.store: EventStore = self.resources.event_store()
        self.channels: Channels = self.resources.channels()
        self.intake = Intake(
            self.topology.chain,
            self.topology.sinks,
            self.topology.live_sinks,
            self.metrics,
            self.clock,
            max_batches=settings.ingest.queue_max_batches,
            max_bytes=settings.ingest.queue_max_bytes,
            client_share=settings.ingest.client_queue_share,
            commit_max_events=settings.ingest.commit_max_events,
            max_payload_bytes=settings.ingest.max_body_bytes,
            error_raw_max_bytes=settings.ingest.error_raw_max_bytes,
            ack_max_results=settings.ingest.ack_max_results,
        )
        self.authenticator = Authenticator(settings.auth, settings.store, self.metrics)
        self.guard = ConnectionGuard(settings, self.metrics)  # limits of the HTTP server
        if self.monitor is not None:
            # Live monitor streams never end by themselves: end them when the server stops.
            self.guard.on_shutdown(self.monitor.close_subscriptions)
        self.stream_subscribers = 0  # open /v1/stream connections (event loop only)
        self.mqtt: MqttEventSource | None = None
        if "mqtt" in self.topology.settings.sources:
            from hopper.ingest.mqtt import MqttEventSource

            self.mqtt = MqttEventSource(self.intake, settings.mqtt)
        self.api_process: ApiProcess | None = None
        if settings.server.api_port is not None:
            from hopper.edge.api.devops import IntakeFigures
            from hopper.edge.api.process import ApiProcess

            self.api_process = ApiProcess(settings, lambda: IntakeFigures.of(self))
        # The writer owns self.store; health checks use a connection of their own.
        self._probe_store: EventStore | None = None
        self._probe_lock = threading.Lock()

    @property
    def sources(self) -> list[str]:
        """Return the edge topology's sources."""
        return list(self.topology.settings.sources)

    @property
    def stream_channels(self) -> dict[str, ChannelSink]:
        """Map each published channel's name to its sink (what its messages are)."""
        return {
            sink.channel: sink for sink in self.topology.live_sinks if isinstance(sink, ChannelSink)
        }

    @property
    def monitor(self) -> MonitorBoard | None:
        """Return the live monitor's board (None: the edge topology has no monitor sink)."""
        for sink in self.topology.live_sinks:
            if isinstance(sink, MonitorSink):
                return sink.board
        return None

    @property
    def is_publishing_healthy(self) -> bool:
        """Tell whether every channel sink's last publish worked."""
        return all(sink.is_healthy for sink in self.stream_channels.values())

    def start(self) -> None:
        """Start the live sinks, the writer and the threaded sources."""
        for sink in self.topology.live_sinks:
            sink.start()
        self.intake.start()
        if self.mqtt is not None:
            self.mqtt.start()
        if self.api_process is not None:
            self.api_process.start()
        logger.info(
            "Edge node started: %s -> %s -> %s; store %s, channels %s, auth %s.",
            " + ".join(self.sources),
            " -> ".join(self.topology.chain.names),
            ", ".join(self.topology.settings.sinks),
            self.store.backend,
            self.channels.backend,
            self.settings.auth.mode,
        )
        if self.authenticator.is_open:
            logger.warning(
                'Auth is open (auth.mode = "open"): anyone who can reach this node may send '
                "events for any school, read every student's live events and the metrics. "
                "Use it on a closed lab network only."
            )

    def stop(self) -> None:
        """Stop sources first, then commit what is queued, then publish and close."""
        if self.api_process is not None:
            self.api_process.stop()
        if self.mqtt is not None:
            self.mqtt.stop()
        self.intake.stop()
        for sink in self.topology.live_sinks:
            sink.stop()
        self.resources.close()  # the sinks' backends: store, topic log, channels
        self.authenticator.close()
        if self._probe_store is not None:
            self._probe_store.close()

    def ping_store(self) -> str | None:
        """Return None if the store answers, else the error (runs in a worker thread)."""
        with self._probe_lock:
            try:
                if self._probe_store is None:
                    self._probe_store = open_event_store(self.settings.store)
                self._probe_store.ping()
            except HopperError as exc:
                if self._probe_store is not None:
                    self._probe_store.close()
                self._probe_store = None
                return str(exc)
        return None

    def free_disk_bytes(self) -> int | None:
        """Return the free space of the store's volume (None: the store is a server)."""
        if self.settings.store.backend != "sqlite":
            return None
        try:
            return shutil.disk_usage(self.settings.store.sqlite_path.parent).free
        except OSError:
            return None

    def ping_channels(self) -> str | None:
        """Return None if the channels answer, else the error."""
        try:
            self.channels.ping()
        except HopperError as exc:
            return str(exc)
        return None
