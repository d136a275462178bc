"""Test helpers shipped with Hopper: a frozen clock, event/batch builders, tokens (no fakes)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from hopper.client import make_event
from hopper.events._pb import events_pb2 as pb
from hopper.events.protobuf import encode_batch

if TYPE_CHECKING:
    from hopper.config import StoreSettings

NOW_MS = 1_790_000_000_000  # 2026-09-21, a fixed "now" for tests


class FrozenClock:
    """A clock that stands still until moved."""

    def __init__(self, now_ms: int = NOW_MS) -> None:
        self.now = now_ms

    def now_ms(self) -> int:
        """Return the frozen time."""
        return self.now

    def advance(self, ms: int) -> None:
        """Move the clock forward."""
        self.now += ms


def create_token(
    store: StoreSettings,
    *scopes: str,
    schools: Iterable[str] | None = None,
    name: str = "test",
) -> str:
    """Create a token in the store (migrating it first) and return its secret."""
    from hopper.access import Scope
    from hopper.access import create_token as create

    return create(store, name, [Scope(s) for s in scopes or ("ingest",)], schools, NOW_MS).token


def bearer(token: str) -> dict[str, str]:
    """Return the ``Authorization`` header carrying ``token``."""
    return {"authorization": f"Bearer {token}"}


def page_view(
    n: int = 0,
    *,
    app_time_ms: int = NOW_MS,
    username: str = "student0001",
    device_id: str = "tablet-0001",
    **fields: Any,
) -> pb.Event:
    """Return a valid page-viewed event; ``n`` makes it distinct from others."""
    payload: Mapping[str, Any] = {"book_id": "book-001", "page": n, "duration_ms": 1000, **fields}
    return make_event(
        "page_viewed",
        payload,
        username=username,
        device_id=device_id,
        school_id="school-001",
        app_time_ms=app_time_ms,
    )


def make_batch(count: int, *, start: int = 0, app_time_ms: int = NOW_MS) -> bytes:
    """Return an encoded batch of ``count`` distinct valid events."""
    return encode_batch(
        page_view(n, app_time_ms=app_time_ms + n) for n in range(start, start + count)
    )
