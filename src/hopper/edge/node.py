"""EdgeNode: the running parts of one school's node, wired from the settings."""

from __future__ import annotations

import logging
import shutil
import threading
from typing import TYPE_CHECKING

from hopper.access import Authenticator
from hopper.clock import Clock, SystemClock
from hopper.config import HopperSettings
from hopper.edge.server import ConnectionGuard
from hopper.errors import HopperError
from hopper.ingest.intake import Intake
from hopper.observe.metrics import HopperMetrics
from hopper.pipeline.topology import build_edge_pipeline
from hopper.pubsub import ChannelRoute, Publisher, open_channels
from hopper.store import EventStore, open_event_store

if TYPE_CHECKING:
    from hopper.ingest.mqtt import MqttEventSource

logger = logging.getLogger(__name__)


class EdgeNode:
    """Store, channels, publisher, intake and the threaded sources of one edge node."""

    def __init__(self, settings: HopperSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = HopperMetrics()
        topology = settings.pipeline.edge
        pipeline = build_edge_pipeline(settings, self.clock, self.metrics)
        self.store = open_event_store(settings.store)
        self.store.migrate()
        self.channels = open_channels(settings.pubsub)
        self.publisher = Publisher(
            self.channels,
            self._routes(),
            self.metrics,
            max_events=settings.pubsub.buffer_max_events,
        )
        self.intake = Intake(
            pipeline,
            self.store,
            self.publisher,
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
        self.stream_subscribers = 0  # open /v1/stream connections (event loop only)
        self.mqtt: MqttEventSource | None = None
        if "mqtt" in topology.sources:
            from hopper.ingest.mqtt import MqttEventSource

            self.mqtt = MqttEventSource(self.intake, settings.mqtt)
        # The writer owns self.store; health checks use a connection of their own.
        self._probe_store: EventStore | None = None
        self._probe_lock = threading.Lock()

    def _routes(self) -> list[ChannelRoute]:
        sinks = self.settings.pipeline.edge.sinks
        pubsub = self.settings.pubsub
        routes = []
        if "protos" in sinks:
            routes.append(ChannelRoute("protos", pubsub.protos_channel))
        if "lp-events" in sinks:
            types = frozenset(pubsub.lp_events_types) if pubsub.lp_events_types else None
            routes.append(ChannelRoute("lp-events", pubsub.lp_events_channel, types))
        return routes

    @property
    def channel_names(self) -> dict[str, str]:
        """Map each published channel name to its sink (``protos`` or ``lp-events``)."""
        return {route.channel: route.sink for route in self._routes()}

    def start(self) -> None:
        """Start the publisher, the writer and the threaded sources."""
        self.publisher.start()
        self.intake.start()
        if self.mqtt is not None:
            self.mqtt.start()
        logger.info(
            "Edge node started: store %s, channels %s, sources %s, auth %s.",
            self.store.backend,
            self.channels.backend,
            ", ".join(self.settings.pipeline.edge.sources),
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
        if self.mqtt is not None:
            self.mqtt.stop()
        self.intake.stop()
        self.publisher.stop()
        self.store.close()
        self.channels.close()
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
