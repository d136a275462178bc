"""Redis pub/sub channels: pipelined PUBLISH, one message per event."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence

from hopper.errors import BackendMissing, BackendUnavailable

try:
    import redis
    import redis.asyncio as aioredis
except ImportError as exc:  # pragma: no cover - depends on the install
    raise BackendMissing("redis", extra="redis", library="redis") from exc

# One round trip per this many PUBLISH commands (one each is ~2.7k/s here, pipelined ~56k/s).
_PIPELINE = 500


class RedisChannels:
    """Channels on a Redis server."""

    backend = "redis"

    def __init__(self, url: str) -> None:
        self._url = url
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def publish(self, channel: str, messages: Sequence[bytes]) -> None:
        """PUBLISH each message, pipelined."""
        try:
            for start in range(0, len(messages), _PIPELINE):
                pipe = self._client.pipeline(transaction=False)
                for message in messages[start : start + _PIPELINE]:
                    pipe.publish(channel, message)
                pipe.execute()
        except redis.RedisError as exc:
            raise BackendUnavailable(f"Redis publish failed: {exc}") from exc

    def has_listeners(self, channel: str) -> bool:
        """Always publish: subscribers are other processes this one cannot see cheaply."""
        return True

    async def subscribe(self, channel: str) -> AsyncGenerator[bytes, None]:
        """Subscribe now; the generator yields messages published from then on."""
        messages = self._messages(channel)
        # Run the generator up to its first yield, i.e. until Redis has confirmed the
        # subscription; from then on aclose() releases the connection even if nothing was
        # read from the generator.
        await anext(messages)
        return messages

    async def _messages(self, channel: str) -> AsyncGenerator[bytes, None]:
        client = aioredis.Redis.from_url(self._url, socket_connect_timeout=5)
        pubsub = client.pubsub()
        try:
            try:
                await pubsub.subscribe(channel)
                # SUBSCRIBE is only sent by the call above. A PUBLISH on another connection
                # that Redis handles before it would be missed: wait for the confirmation.
                while True:
                    reply = await pubsub.get_message(timeout=5.0)
                    if reply is None:
                        raise BackendUnavailable(f"Redis did not confirm SUBSCRIBE {channel}")
                    if reply["type"] == "subscribe":
                        break
            except redis.RedisError as exc:
                raise BackendUnavailable(f"Redis subscribe failed: {exc}") from exc
            yield b""  # the priming value, consumed by subscribe()
            while True:
                try:
                    message = await pubsub.get_message(timeout=1.0)
                except redis.RedisError as exc:
                    raise BackendUnavailable(f"Redis subscription lost: {exc}") from exc
                if message is not None and message["type"] == "message":
                    yield message["data"]
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await client.aclose()

    def ping(self) -> None:
        """Check that Redis answers."""
        try:
            self._client.ping()
        except redis.RedisError as exc:
            raise BackendUnavailable(f"Redis unavailable: {exc}") from exc

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()
