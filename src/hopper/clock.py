"""Time, injectable so tests can freeze it."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """A source of the current time."""

    def now_ms(self) -> int:
        """Return the current Unix time in milliseconds (UTC)."""
        ...


class SystemClock:
    """The machine's real clock."""

    def now_ms(self) -> int:
        """Return the current Unix time in milliseconds (UTC)."""
        return time.time_ns() // 1_000_000
