"""Worker: runs a topology whose sources are topics, as one member of their consumer groups.

``hopper worker NAME`` builds topology ``pipeline.NAME`` (sources ``topic:...``), joins
each topic's consumer group (``pipeline.NAME.group``, default the topology's name), and
runs the same intake and writer as the edge node: offsets are committed only after every
durable sink has the records. Several workers of one topology share the partitions.

With a status port (``hopper worker NAME --status-port N``) it also answers ``/health``
(no token, for Zabbix and orchestrators: the same shape as the edge node's) and
``/metrics`` (the ``metrics`` scope, as on the node) on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hopper.access import Authenticator, AuthError, Scope
from hopper.clock import Clock, SystemClock
from hopper.config import HopperSettings
from hopper.errors import ConfigError, HopperError
from hopper.ingest.http import auth_error_response, authenticate_request
from hopper.ingest.intake import Intake
from hopper.ingest.topic import TopicEventSource
from hopper.observe.health import HEALTH_MEDIA_TYPE, Checks, check, ok_flag, overall
from hopper.observe.metrics import HopperMetrics
from hopper.pipeline.topology import TOPIC, Resources, build_topology, split_component
from hopper.store import EventStore, open_event_store

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

        self._probe_lock = threading.Lock()
        self._probe_store: EventStore | None = None
        self._stopped = False  # no probe opens a connection once the worker has closed

    def ping_store(self) -> str | None:
        """Return None if the store answers on a connection of its own, else the error."""
        with self._probe_lock:
            if self._stopped:
                return "the worker is stopping"
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

    def health(self) -> tuple[int, dict[str, Any]]:
        """Check the writer, the store and the consumers; return the HTTP status and body.

        A worker does nothing but consume, so a consumer that is not connected to its
        topic fails it (on the node, one source down only degrades it).
        """
        intake = self.intake
        sinks = self.topology.settings.sinks
        checks: Checks = {}
        if "store" in sinks:
            checks["store"] = check(self.ping_store(), backend=self.settings.store.backend)
        checks["writer"] = check(None if intake.is_alive else "writer thread is not running")
        # Every durable sink (the store, a topic): the writer retries while one fails.
        checks["sinks"] = check(
            None if intake.is_store_healthy else f"the last commit failed: {intake.last_error}",
            sinks=list(sinks),
        )
        down = [
            f"{s.name}: {'stopped' if not s.is_alive else s.last_error or 'not connected yet'}"
            for s in self.sources
            if not (s.is_alive and s.is_connected)
        ]
        checks["consumers"] = check(
            "; ".join(down) or None,
            group=self.topology.settings.group or self.name,
            topics=[s.name for s in self.sources],
        )
        status = overall(checks)
        now = self.clock.now_ms()
        last = intake.last_commit_ms
        body: dict[str, Any] = {
            "status": status,
            "ok": int(status != "fail"),
            "role": "worker",
            "topology": self.name,
            "store_ok": ok_flag(checks, "store"),
            "sinks_ok": ok_flag(checks, "sinks"),
            "consumers_ok": ok_flag(checks, "consumers"),
            "queue_depth": intake.depth,
            "queue_capacity": intake.capacity,
            "queue_bytes": intake.admission.bytes,
            "consumed": sum(s.consumed for s in self.sources),
            "committed": sum(s.committed for s in self.sources),
            "last_commit_age_s": None if last is None else round((now - last) / 1000, 3),
            "checks": checks,
        }
        return (503 if status == "fail" else 200), body

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
        with self._probe_lock:
            self._stopped = True
            if self._probe_store is not None:
                self._probe_store.close()
                self._probe_store = None


def create_status_app(worker: Worker, authenticator: Authenticator) -> Starlette:
    """The worker's ``/health`` (no token) and ``/metrics`` (the ``metrics`` scope)."""

    async def health(request: Request) -> Response:
        status, body = await asyncio.to_thread(worker.health)
        return JSONResponse(body, status_code=status, media_type=HEALTH_MEDIA_TYPE)

    async def metrics(request: Request) -> Response:
        if not authenticator.is_metrics_open:
            try:
                await authenticate_request(request, authenticator, Scope.METRICS)
            except AuthError as exc:
                return auth_error_response(exc)
        return Response(worker.metrics.exposition(), media_type="text/plain; version=0.0.4")

    return Starlette(routes=[Route("/health", health), Route("/metrics", metrics)])


class StatusServer:
    """Serves ``create_status_app`` in a thread of its own (uvicorn, one small loop)."""

    def __init__(self, worker: Worker, host: str, port: int) -> None:
        settings = worker.settings
        self._authenticator = Authenticator(settings.auth, settings.store, worker.metrics)
        config = uvicorn.Config(
            create_status_app(worker, self._authenticator),
            host=host,
            port=port,
            lifespan="off",
            loop="asyncio",  # not uvloop: its policy would be set for the whole process
            access_log=False,
            log_level="warning",
            log_config=None,
            limit_concurrency=64,  # a few probes and scrapers, never a crowd
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._serve, name="hopper-worker-status", daemon=True
        )

    def _serve(self) -> None:
        try:
            self._server.run()
        except SystemExit:  # uvicorn exits when it cannot bind; start() reports it
            pass

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; raise ConfigError if the port cannot be listened on."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise ConfigError(
                    f"--status-port: cannot listen on {self._server.config.host}:"
                    f"{self._server.config.port} (taken?)"
                )
            if time.monotonic() > deadline:
                raise ConfigError("--status-port: the status server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop serving."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(10)
        self._authenticator.close()
