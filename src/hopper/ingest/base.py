"""What sources share: the acknowledgement's content and the delivery it answers.

Source        a threaded source (MQTT, a topic's consumer): ``start`` / ``stop``
RouteSource   a source served by the HTTP server (HTTP, WebSocket): its ``routes``
Delivery      one payload a source received, with the handle that acknowledges it:
              ``ack(outcome)`` after every durable sink committed it, ``nack(error)``
              when it was not stored (the client resends, the broker redelivers)
BatchOutcome  what became of the payload, told to the client
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.routing import BaseRoute

from hopper.events.model import WHOLE_PAYLOAD, Rejection, RejectReason
from hopper.ingest.admission import Ticket
from hopper.pipeline.stage import ANY_ORIGIN, Origin


@dataclass(slots=True)
class BatchOutcome:
    """What became of one payload: told to the client in its acknowledgement.

    Rejections are kept as counts by reason plus at most ``max_results`` per-event
    results, so that an answer stays small whatever the payload held.
    """

    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    is_payload_rejected: bool = False  # the payload as a whole was refused
    error: str | None = None
    max_results: int = 100

    def add_rejection(self, rejection: Rejection) -> None:
        """Count a rejection (duplicates are counted apart) and keep its result if room."""
        if rejection.reason is RejectReason.DUPLICATE:
            self.duplicates += 1
            return
        self.rejected += 1
        reason = rejection.reason.value
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if rejection.index == WHOLE_PAYLOAD:
            self.is_payload_rejected = True
        if len(self.results) < self.max_results:
            self.results.append(rejection.as_result())

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON body of an acknowledgement."""
        body: dict[str, Any] = {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "results": self.results,
        }
        if self.rejected:
            body["reasons"] = self.reasons
        if self.rejected > len(self.results):
            body["results_truncated"] = True
        if self.error is not None:
            body["error"] = self.error
        return body


OnDone = Callable[[BatchOutcome], None]


@dataclass(slots=True)
class Delivery:
    """A payload as a source queued it, and the handle that acknowledges it."""

    payload: bytes
    source: str
    on_done: OnDone
    rejection: Rejection | None = None  # the source refused it itself (too large, media type)
    ticket: Ticket | None = None  # its admission, given back when it is answered
    origin: Origin = ANY_ORIGIN

    def ack(self, outcome: BatchOutcome) -> None:
        """Acknowledge: every durable sink has the payload's records (or its rejections)."""
        self.on_done(outcome)

    def nack(self, error: str) -> None:
        """Refuse: nothing of the payload is stored; the client should send it again."""
        self.on_done(BatchOutcome(error=error))


class Source(Protocol):
    """A source with a thread of its own (MQTT, a topic's consumer group member)."""

    name: str

    def start(self) -> None:
        """Start receiving."""
        ...

    def stop(self, timeout: float = 5.0) -> None:
        """Stop receiving; what was received is either acknowledged or left for redelivery."""
        ...


class RouteSource(Protocol):
    """A source the HTTP server serves (HTTP, WebSocket)."""

    name: str

    def routes(self) -> Sequence[BaseRoute]:
        """Return the routes to mount."""
        ...
