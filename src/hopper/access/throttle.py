"""LoginThrottle: failed logins counted per username and per client address, in bounded memory.

Each key keeps the times of its failures within the window; a key with too many is
refused until its oldest failure leaves the window (the answer says how long). At most
``max_entries`` keys are kept: the least recently failed are forgotten first, so a flood
of made-up usernames costs memory only up to that bound. A success clears the username.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque


class LoginThrottle:
    """Counts failures; ``retry_after`` says whether (and how long) to refuse a login."""

    def __init__(
        self,
        *,
        window_ms: int,
        max_per_user: int,
        max_per_address: int,
        max_entries: int,
    ) -> None:
        self._window_ms = window_ms
        self._limits = {"user": max_per_user, "address": max_per_address}
        self._max_entries = max_entries
        self._failures: OrderedDict[tuple[str, str], deque[int]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after_secs(self, username: str, address: str, now_ms: int) -> int:
        """Return 0 when a login may be tried now, else the seconds to wait."""
        wait = 0
        with self._lock:
            for key in (("user", username.lower()), ("address", address)):
                times = self._recent(key, now_ms)
                if times is not None and len(times) >= self._limits[key[0]]:
                    wait = max(wait, (times[0] + self._window_ms - now_ms + 999) // 1000)
        return max(wait, 0)

    def failed(self, username: str, address: str, now_ms: int) -> None:
        """Count a failed login."""
        with self._lock:
            for key in (("user", username.lower()), ("address", address)):
                times = self._recent(key, now_ms)
                if times is None:
                    times = self._failures[key] = deque(maxlen=self._limits[key[0]])
                times.append(now_ms)
                self._failures.move_to_end(key)
            while len(self._failures) > self._max_entries:
                self._failures.popitem(last=False)

    def succeeded(self, username: str) -> None:
        """Forget a username's failures after a good login."""
        with self._lock:
            self._failures.pop(("user", username.lower()), None)

    @property
    def size(self) -> int:
        """Return how many keys are tracked."""
        return len(self._failures)

    def _recent(self, key: tuple[str, str], now_ms: int) -> deque[int] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now_ms - self._window_ms:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times
