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

    async def subscribe(self, channel: str) -> AsyncGenerator[bytes, None]:
        """Subscribe now; the generator yields messages published from then on."""
        client = aioredis.Redis.from_url(self._url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
        except redis.RedisError as exc:
            await client.aclose()
            raise BackendUnavailable(f"Redis subscribe failed: {exc}") from exc
        return self._messages(client, pubsub)

    async def _messages(
        self, client: aioredis.Redis, pubsub: aioredis.client.PubSub
    ) -> AsyncGenerator[bytes, None]:
        try:
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
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
