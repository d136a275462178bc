"""Publisher: a bounded buffer and a thread that fan accepted events out to channels."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from hopper.errors import HopperError
from hopper.events.json import event_to_json
from hopper.events.model import Event
from hopper.observe.metrics import HopperMetrics
from hopper.pubsub.base import Channels

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChannelRoute:
    """Which channel gets which form of the event."""

    sink: str  # "protos" or "lp-events"
    channel: str
    event_types: frozenset[str] | None = None  # None: every event type

    def messages(self, events: Sequence[Event], received_ms: int) -> list[bytes]:
        """Render the events this route publishes."""
        if self.sink == "protos":
            return [e.raw for e in events]
        types = self.event_types
        return [
            event_to_json(e, received_ms) for e in events if types is None or e.event_type in types
        ]


class Publisher:
    """Publishes after the commit without ever blocking the writer.

    When the buffer is full, the newest events are dropped and counted: channels are
    live and best effort, the store is the record.
    """

    def __init__(
        self,
        channels: Channels,
        routes: Sequence[ChannelRoute],
        metrics: HopperMetrics,
        *,
        max_events: int = 100_000,
    ) -> None:
        self.channels = channels
        self._routes = list(routes)
        self._metrics = metrics
        self._max = max_events
        self._buffer: deque[tuple[list[Event], int]] = deque()
        self._buffered = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="hopper-publisher", daemon=True)
        self.is_healthy = True

    def start(self) -> None:
        """Start the publishing thread."""
        if self._routes:
            self._thread.start()

    def offer(self, events: list[Event], received_ms: int) -> None:
        """Queue committed events for publishing; drop (and count) if the buffer is full."""
        self.offer_all([(events, received_ms)])

    def offer_all(self, batches: Sequence[tuple[list[Event], int]]) -> None:
        """Queue the committed events of a whole group commit, waking the thread once."""
        if not any(self.channels.has_listeners(route.channel) for route in self._routes):
            return  # nobody listens on an in-process channel: not even worth a wake-up
        with self._cond:
            for events, received_ms in batches:
                if not events:
                    continue
                if self._buffered + len(events) > self._max:
                    for route in self._routes:
                        self._metrics.component(route.sink).dropped("buffer_full", len(events))
                    continue
                self._buffer.append((events, received_ms))
                self._buffered += len(events)
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> None:
        """Publish what is buffered, then stop."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._buffer and not self._stopping:
                    self._cond.wait()
                if not self._buffer:
                    return
                items = list(self._buffer)
                self._buffer.clear()
                self._buffered = 0
            for route in self._routes:
                self._publish(route, items)

    def _publish(self, route: ChannelRoute, items: list[tuple[list[Event], int]]) -> None:
        metrics = self._metrics.component(route.sink)
        if not self.channels.has_listeners(route.channel):
            return  # nobody listens on an in-process channel: rendering would be wasted
        messages: list[bytes] = []
        for events, received_ms in items:
            messages += route.messages(events, received_ms)
        metrics.received.inc(len(messages))
        try:
            self.channels.publish(route.channel, messages)
        except HopperError as exc:
            self.is_healthy = False
            metrics.dropped("backend_unavailable", len(messages))
            metrics.error(type(exc).__name__)
            logger.warning("Could not publish on channel %s: %s.", route.channel, exc)
            return
        self.is_healthy = True
        metrics.sent.inc(len(messages))
