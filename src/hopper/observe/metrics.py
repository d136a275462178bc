"""The fixed set of component counters, defined once (Prometheus exposition)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client import Counter as _Counter  # noqa: TID251 - defined here only


class ComponentMetrics:
    """Counters of one component (a source, a stage or a sink), labelled ``component``."""

    def __init__(self, metrics: HopperMetrics, component: str) -> None:
        self._metrics = metrics
        self.component = component
        self.received = metrics.received.labels(component=component)
        self.sent = metrics.sent.labels(component=component)

    def rejected(self, reason: str, count: int = 1) -> None:
        """Count events refused for ``reason``."""
        if count:
            self._metrics.rejected.labels(component=self.component, reason=reason).inc(count)

    def dropped(self, reason: str, count: int = 1) -> None:
        """Count events deliberately not delivered (best-effort sinks only)."""
        if count:
            self._metrics.dropped.labels(component=self.component, reason=reason).inc(count)

    def error(self, error_type: str) -> None:
        """Count an internal error of this component."""
        self._metrics.errors.labels(component=self.component, error_type=error_type).inc()


class HopperMetrics:
    """All of one Hopper process's metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = _Counter(
            "events_received", "Events that reached a component.", ["component"], registry=r
        )
        self.sent = _Counter(
            "events_sent", "Events a component passed on or stored.", ["component"], registry=r
        )
        self.rejected = _Counter(
            "events_rejected",
            "Events a component refused, by reason code.",
            ["component", "reason"],
            registry=r,
        )
        self.dropped = _Counter(
            "events_dropped",
            "Events a best-effort component did not deliver, by reason.",
            ["component", "reason"],
            registry=r,
        )
        self.errors = _Counter(
            "component_errors", "Internal errors, by type.", ["component", "error_type"], registry=r
        )
        self.connections_open = Gauge(
            "connections_open", "HTTP and WebSocket connections open.", registry=r
        )
        self.connections_refused = _Counter(
            "connections_refused",
            "Connections and requests refused or closed by a limit, by reason.",
            ["reason"],
            registry=r,
        )
        self.auth_failures = _Counter(
            "auth_failures", "Requests refused for their token, by reason.", ["reason"], registry=r
        )
        self.queue_depth = Gauge(
            "intake_queue_batches", "Batches waiting for the writer.", registry=r
        )
        self.queue_capacity = Gauge(
            "intake_queue_capacity_batches", "Bound of the intake queue.", registry=r
        )
        self.queue_bytes = Gauge(
            "intake_queue_bytes", "Bytes of the batches waiting for the writer.", registry=r
        )
        self.queue_capacity_bytes = Gauge(
            "intake_queue_capacity_bytes", "Bound of the intake queue in bytes.", registry=r
        )
        self.commit_seconds = Histogram(
            "store_commit_seconds",
            "Duration of one group commit.",
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.commit_events = Histogram(
            "store_commit_events",
            "Events written by one group commit.",
            registry=r,
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000),
        )
        # The live monitor (hopper.edge.monitor).
        self.monitor_devices = Gauge(
            "monitor_devices", "Devices the live monitor tracks, by state.", ["state"], registry=r
        )
        self.monitor_subscribers = Gauge(
            "monitor_subscribers", "Open live monitor subscriptions (streams, pages).", registry=r
        )
        self.monitor_changes = _Counter(
            "monitor_changes", "Device changes the live monitor emitted.", registry=r
        )
        self.monitor_coalesced = _Counter(
            "monitor_coalesced",
            "Device changes merged into one a subscriber had not taken yet.",
            registry=r,
        )
        self.monitor_resets = _Counter(
            "monitor_resets",
            "Snapshots sent instead of changes, by reason.",
            ["reason"],
            registry=r,
        )
        self.monitor_forgotten = _Counter(
            "monitor_forgotten",
            "Devices the live monitor stopped tracking, by reason.",
            ["reason"],
            registry=r,
        )
        self.monitor_delivery_seconds = Histogram(
            "monitor_delivery_seconds",
            "From an event's receipt to its change written to a live monitor stream.",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        # The analytics API (hopper.edge.api.timing), in whichever process serves it.
        self.api_request_seconds = Histogram(
            "api_request_seconds",
            "Analytics API requests, to the response's first byte, by endpoint and status.",
            ["endpoint", "status"],
            registry=r,
            buckets=(0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self._components: dict[str, ComponentMetrics] = {}

    def component(self, name: str) -> ComponentMetrics:
        """Return (creating once) the counters of component ``name``."""
        found = self._components.get(name)
        if found is None:
            found = self._components[name] = ComponentMetrics(self, name)
        return found

    def exposition(self) -> bytes:
        """Render every metric in the Prometheus text format."""
        return generate_latest(self.registry)
