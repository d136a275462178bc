"""Admission to the intake queue: bounded by payloads and bytes, in arrival order, fair.

Every source asks here before it queues a payload, and gets a ``Ticket`` that the writer
gives back once the payload is committed. Three rules:

- **Bounds.** At most ``max_payloads`` payloads and ``max_bytes`` bytes are admitted and
  not yet committed. A payload that does not fit waits (or is refused, for a source that
  cannot wait).
- **Arrival order.** Waiters are served first come, first served, whatever their source:
  a freed slot goes to the oldest waiter, never to whoever polls at the right moment.
- **A fair share per client.** A client (a device's address, a token, an MQTT topic) may
  hold at most ``client_share`` of either bound while others wait: the oldest waiter
  *within* its share is served first. When every waiter is over its share (one busy
  client, say), the oldest is served anyway, so a lone client can still use everything.

Thread-safe: the event loop and paho's thread wait here, the writer thread releases.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True, eq=False)
class Ticket:
    """A payload's admission: its client and the bytes it holds until committed."""

    client: str
    size: int
    is_released: bool = False


@dataclass(slots=True, eq=False)
class _Waiter:
    client: str
    size: int
    notify: Callable[[Ticket], None]
    ticket: Ticket | None = None


@dataclass(slots=True)
class _Held:
    payloads: int = 0
    bytes: int = 0


@dataclass
class AdmissionStats:
    """A snapshot of the admission's state, for health and metrics."""

    payloads: int
    bytes: int
    waiting: int
    clients: int
    max_payloads: int
    max_bytes: int


@dataclass
class Admission:
    """FIFO admission bounded by payloads and bytes, with a per-client share."""

    max_payloads: int
    max_bytes: int
    client_share: float = 0.25
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _waiters: deque[_Waiter] = field(default_factory=deque, repr=False)
    _held: dict[str, _Held] = field(default_factory=dict, repr=False)
    payloads: int = 0
    bytes: int = 0

    def __post_init__(self) -> None:
        self._share_payloads = max(1, int(self.max_payloads * self.client_share))
        self._share_bytes = max(1, int(self.max_bytes * self.client_share))

    # -- asking ---------------------------------------------------------------------------

    def try_admit(self, client: str, size: int) -> Ticket | None:
        """Admit now if nobody waits and the payload fits; never waits."""
        with self._lock:
            if self._waiters or not self._fits(size):
                return None
            return self._grant(client, size)

    async def admit(self, client: str, size: int, timeout: float | None = None) -> Ticket | None:
        """Wait in line for admission; None when ``timeout`` seconds pass first."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Ticket] = loop.create_future()

        def notify(ticket: Ticket) -> None:  # runs under the lock, in any thread
            loop.call_soon_threadsafe(_resolve, future, ticket)

        waiter = self._enter(client, size, notify)
        if waiter.ticket is not None:
            return waiter.ticket
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self._leave(waiter)
            return None
        except asyncio.CancelledError:
            self._leave(waiter)  # the connection went away while waiting
            raise

    def admit_blocking(
        self, client: str, size: int, timeout: float, *, is_abandoned: Callable[[], bool]
    ) -> Ticket | None:
        """Wait in line in a thread (MQTT); None if ``is_abandoned()`` turns true first."""
        granted = threading.Event()
        waiter = self._enter(client, size, lambda ticket: granted.set())
        while waiter.ticket is None:
            if granted.wait(timeout):
                break
            if is_abandoned():
                self._leave(waiter)
                return None
        return waiter.ticket

    def release(self, ticket: Ticket) -> None:
        """Give a ticket back (after the commit, or when a source gives up); idempotent."""
        with self._lock:
            if ticket.is_released:
                return
            ticket.is_released = True
            self.payloads -= 1
            self.bytes -= ticket.size
            held = self._held[ticket.client]
            held.payloads -= 1
            held.bytes -= ticket.size
            if not held.payloads:
                del self._held[ticket.client]
            self._dispatch()

    def stats(self) -> AdmissionStats:
        """Return the current load."""
        with self._lock:
            return AdmissionStats(
                self.payloads,
                self.bytes,
                len(self._waiters),
                len(self._held),
                self.max_payloads,
                self.max_bytes,
            )

    # -- inside the lock ----------------------------------------------------------------------

    def _enter(self, client: str, size: int, notify: Callable[[Ticket], None]) -> _Waiter:
        waiter = _Waiter(client, size, notify)
        with self._lock:
            if not self._waiters and self._fits(size):
                waiter.ticket = self._grant(client, size)
            else:
                self._waiters.append(waiter)
                self._dispatch()  # a waiter within its share may go before over-share ones
        return waiter

    def _leave(self, waiter: _Waiter) -> None:
        """Withdraw a waiter; if it was granted meanwhile, give the ticket back."""
        with self._lock:
            if waiter.ticket is None:
                self._waiters.remove(waiter)
                self._dispatch()  # it may have been the head that blocked the others
                return
        self.release(waiter.ticket)

    def _fits(self, size: int) -> bool:
        if self.payloads == 0:
            return True  # an empty queue takes anything: no payload can wait forever
        return self.payloads < self.max_payloads and self.bytes + size <= self.max_bytes

    def _within_share(self, client: str, size: int) -> bool:
        held = self._held.get(client)
        if held is None:
            return True
        return held.payloads < self._share_payloads and held.bytes + size <= self._share_bytes

    def _grant(self, client: str, size: int) -> Ticket:
        self.payloads += 1
        self.bytes += size
        held = self._held.get(client)
        if held is None:
            held = self._held[client] = _Held()
        held.payloads += 1
        held.bytes += size
        return Ticket(client, size)

    def _dispatch(self) -> None:
        while self._waiters:
            chosen = next((w for w in self._waiters if self._within_share(w.client, w.size)), None)
            if chosen is None:
                chosen = self._waiters[0]  # everyone is over their share: plain FIFO
            if not self._fits(chosen.size):
                return  # it goes first when room frees up; nobody overtakes it
            self._waiters.remove(chosen)
            chosen.ticket = self._grant(chosen.client, chosen.size)
            chosen.notify(chosen.ticket)


def _resolve(future: asyncio.Future[Ticket], ticket: Ticket) -> None:
    if not future.done():
        future.set_result(ticket)
