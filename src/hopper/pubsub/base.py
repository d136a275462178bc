"""The Channels interface: live, best-effort fan-out of accepted events."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Protocol


class Channels(Protocol):
    """Named pub/sub channels.

    Guarantees: ``publish`` is called from a channel sink's thread, after the durable commit;
    delivery is best effort (a subscriber that is not listening misses messages).
    """

    backend: str

    def publish(self, channel: str, messages: Sequence[bytes]) -> None:
        """Publish messages, in order, one message each, on ``channel``."""
        ...

    def has_listeners(self, channel: str) -> bool:
        """Tell whether publishing on ``channel`` can reach anyone (False lets it skip work)."""
        ...

    async def subscribe(self, channel: str) -> AsyncGenerator[bytes, None]:
        """Subscribe now; the returned generator yields what is published from then on."""
        ...

    def ping(self) -> None:
        """Raise BackendUnavailable if the channels cannot be used."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
