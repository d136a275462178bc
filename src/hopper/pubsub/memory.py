"""In-process channels, delivered to subscribers in the server's event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncGenerator, Sequence

logger = logging.getLogger(__name__)


class _Subscriber:
    def __init__(self, loop: asyncio.AbstractEventLoop, max_messages: int) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(max_messages)
        self.dropped = 0

    def deliver(self, messages: Sequence[bytes]) -> None:
        for message in messages:
            try:
                self.queue.put_nowait(message)
            except asyncio.QueueFull:
                self.dropped += 1  # a slow consumer loses messages, never blocks the writer


class MemoryChannels:
    """Channels that live in this process; subscribers are asyncio consumers."""

    backend = "memory"

    def __init__(self, *, subscriber_max_messages: int = 10_000) -> None:
        self._subscribers: dict[str, list[_Subscriber]] = {}
        self._lock = threading.Lock()
        self._max = subscriber_max_messages

    def publish(self, channel: str, messages: Sequence[bytes]) -> None:
        """Hand the messages to every current subscriber's queue (thread-safe)."""
        with self._lock:
            subscribers = list(self._subscribers.get(channel, ()))
        for sub in subscribers:
            try:
                sub.loop.call_soon_threadsafe(sub.deliver, list(messages))
            except RuntimeError:
                logger.debug("Subscriber loop closed; skipping.")

    def has_listeners(self, channel: str) -> bool:
        """Tell whether anyone in this process listens on ``channel``."""
        return bool(self._subscribers.get(channel))

    def subscriber_count(self, channel: str) -> int:
        """Return how many consumers listen on ``channel``."""
        with self._lock:
            return len(self._subscribers.get(channel, ()))

    async def subscribe(self, channel: str) -> AsyncGenerator[bytes, None]:
        """Subscribe now; the generator yields messages published from then on."""
        messages = self._messages(channel, _Subscriber(asyncio.get_running_loop(), self._max))
        # Run the generator up to its first yield: it is then registered, and aclose()
        # unregisters it even if it is closed before anything was read from it.
        await anext(messages)
        return messages

    async def _messages(self, channel: str, sub: _Subscriber) -> AsyncGenerator[bytes, None]:
        with self._lock:
            self._subscribers.setdefault(channel, []).append(sub)
        try:
            yield b""  # the priming value, consumed by subscribe()
            while True:
                yield await sub.queue.get()
        finally:
            with self._lock:
                subscribers = self._subscribers.get(channel, [])
                if sub in subscribers:  # close() may have forgotten it already
                    subscribers.remove(sub)
                if not subscribers:
                    self._subscribers.pop(channel, None)
            if sub.dropped:
                logger.warning(
                    "A slow subscriber of channel %s missed %d messages.", channel, sub.dropped
                )

    def ping(self) -> None:
        """In-process channels are always available."""

    def close(self) -> None:
        """Forget every subscriber."""
        with self._lock:
            self._subscribers.clear()
