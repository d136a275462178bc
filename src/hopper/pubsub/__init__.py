"""Live channels (``protos``, ``lp-events``): in-process or Redis pub/sub."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hopper.pubsub.base import Channels
from hopper.pubsub.sink import ChannelSink, render_json, render_raw

if TYPE_CHECKING:
    from hopper.config import PubsubSettings


def open_channels(settings: PubsubSettings) -> Channels:
    """Open the channel backend the settings choose."""
    if settings.backend == "redis":
        from hopper.pubsub.redis import RedisChannels

        return RedisChannels(settings.redis_url.get_secret_value())
    from hopper.pubsub.memory import MemoryChannels

    return MemoryChannels(subscriber_max_messages=settings.subscriber_max_messages)


__all__ = ["ChannelSink", "Channels", "open_channels", "render_json", "render_raw"]
