"""ChannelSink: a live sink that publishes newly stored events on one pub/sub channel.

Each channel sink has its own bounded buffer and thread, so a slow channel never blocks
the writer nor another channel. What a channel carries is decided by its renderer (raw
protobuf, JSON, a filtered JSON), never by its name.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Literal

from hopper.errors import HopperError
from hopper.events.json import event_to_json
from hopper.events.model import Event
from hopper.observe.metrics import HopperMetrics
from hopper.pubsub.base import Channels

logger = logging.getLogger(__name__)

# Renders one event (with its received time) into a channel message; None skips it.
Render = Callable[[Event, int], bytes | None]


def render_raw(event: Event, received_ms: int) -> bytes:
    """The event's exact protobuf bytes (channel ``protos``)."""
    return event.raw


def render_json(event_types: frozenset[str] | None = None) -> Render:
    """The event as JSON (channel ``lp-events``), optionally only some event types."""
    if event_types is None:
        return event_to_json

    def render(event: Event, received_ms: int) -> bytes | None:
        return event_to_json(event, received_ms) if event.event_type in event_types else None

    return render


class ChannelSink:
    """Publishes after the commit without ever blocking the writer.

    When the buffer is full, the newest events are dropped and counted: channels are
    live and best effort, the store is the record.
    """

    def __init__(
        self,
        name: str,
        channels: Channels,
        channel: str,
        render: Render,
        metrics: HopperMetrics,
        *,
        message_format: Literal["protobuf", "json"],
        max_events: int = 100_000,
    ) -> None:
        self.name = name
        self.message_format = message_format  # what a message is: one Event, or JSON text
        self.channel = channel
        self.channels = channels
        self._render = render
        self._metrics = metrics.component(name)
        self._max = max_events
        self._buffer: deque[tuple[list[Event], int]] = deque()
        self._buffered = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"hopper-{name}", daemon=True)
        self.is_healthy = True

    def start(self) -> None:
        """Start the publishing thread."""
        self._thread.start()

    def offer(self, batches: Sequence[tuple[list[Event], int]]) -> None:
        """Queue the new events of a group commit, waking the thread once; drop if full."""
        if not self.channels.has_listeners(self.channel):
            return  # nobody listens on an in-process channel: not even worth a wake-up
        with self._cond:
            for events, received_ms in batches:
                if not events:
                    continue
                if self._buffered + len(events) > self._max:
                    self._metrics.dropped("buffer_full", len(events))
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
            self._publish(items)

    def _publish(self, items: list[tuple[list[Event], int]]) -> None:
        if not self.channels.has_listeners(self.channel):
            return  # nobody listens on an in-process channel: rendering would be wasted
        render = self._render
        messages: list[bytes] = []
        for events, received_ms in items:
            for event in events:
                message = render(event, received_ms)
                if message is not None:
                    messages.append(message)
        self._metrics.received.inc(len(messages))
        try:
            self.channels.publish(self.channel, messages)
        except HopperError as exc:
            self.is_healthy = False
            self._metrics.dropped("backend_unavailable", len(messages))
            self._metrics.error(type(exc).__name__)
            logger.warning("Could not publish on channel %s: %s.", self.channel, exc)
            return
        self.is_healthy = True
        self._metrics.sent.inc(len(messages))
