"""WebSocket source: binary frames are batches, each answered by a JSON ack frame.

The n-th frame a client sends on a connection has sequence number n (from 1); acks carry
it, so a client can pipeline frames and resend those not acknowledged after a reconnect.

The connection never stops reading while it waits for the intake queue: it keeps
answering pings (uvicorn pauses the socket until the app reads each frame, so a handler
that waits before reading would let the client's keepalive time out). Frames read while
the queue is full wait in a small per-connection buffer (``ingest.websocket_pending_*``);
a frame beyond it is answered at once with a retryable ``busy`` ack and not stored, like
an HTTP 503: the client resends it later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from hopper.access import Authenticator, AuthError, Principal, Scope
from hopper.access.authenticator import (
    SUBPROTOCOL,
    bearer_from_header,
    bearer_from_subprotocols,
)
from hopper.events.model import WHOLE_PAYLOAD, Rejection, RejectReason
from hopper.ingest.base import BatchOutcome
from hopper.ingest.http import auth_error_response
from hopper.ingest.intake import Intake
from hopper.pipeline.stage import Origin

logger = logging.getLogger(__name__)

# Acks a client may leave unread before the connection is closed: it is not listening.
MAX_UNSENT_ACKS = 4096


@dataclass(slots=True)
class _Frame:
    seq: int
    data: bytes
    rejection: Rejection | None


async def accept_authenticated(
    websocket: WebSocket, authenticator: Authenticator, scope: Scope
) -> Principal | None:
    """Check the token, then accept; a refused handshake gets an HTTP 401/403 answer.

    The token comes in ``Authorization: Bearer`` or, from a browser (which cannot set
    headers on a WebSocket), as the subprotocol ``hopper.bearer.<token>`` offered beside
    ``hopper``: the server selects ``hopper`` and never echoes the token.
    """
    offered = list(websocket.scope.get("subprotocols") or [])
    token = bearer_from_header(websocket.headers.get("authorization"))
    if token is None:
        token = bearer_from_subprotocols(offered)
    try:
        principal = await authenticator.authenticate(token, scope)
    except AuthError as exc:
        await websocket.send_denial_response(auth_error_response(exc))
        return None
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    return principal


class WebSocketEventReceiver:
    """Receives event batches over a WebSocket, acking each after its commit."""

    source = "websocket"
    path = "/v1/events/ws"

    def __init__(
        self,
        intake: Intake,
        authenticator: Authenticator,
        *,
        pending_max_bytes: int = 4 * 1024 * 1024,
        pending_max_frames: int = 256,
        retry_after_secs: int = 1,
        error_raw_max_bytes: int = 4096,
    ) -> None:
        self._intake = intake
        self._auth = authenticator
        self._pending_max_bytes = pending_max_bytes
        self._pending_max_frames = pending_max_frames
        self._retry_after = retry_after_secs
        self._kept = error_raw_max_bytes
        self.busy_frames = 0  # frames answered "busy" since start

    def routes(self) -> Sequence[BaseRoute]:
        """Return the route this receiver serves."""
        return [WebSocketRoute(self.path, self.handle)]

    async def handle(self, websocket: WebSocket) -> None:
        """Serve one connection."""
        principal = await accept_authenticated(websocket, self._auth, Scope.INGEST)
        if principal is None:
            return
        origin = Origin(self.source, _client_key(websocket), principal.schools)
        await self.serve(websocket, origin)

    async def serve(self, websocket: WebSocket, origin: Origin) -> None:
        """Read frames until the client leaves; the connection is already accepted."""
        client = origin.client
        loop = asyncio.get_running_loop()
        acks: asyncio.Queue[bytes | None] = asyncio.Queue()
        pending: deque[_Frame] = deque()
        pending_bytes = 0
        wake = asyncio.Event()
        sender = asyncio.create_task(_send_acks(websocket, acks))

        def ack(body: bytes) -> None:
            acks.put_nowait(body)

        async def admit_in_order() -> None:
            nonlocal pending_bytes
            while True:
                await wake.wait()
                wake.clear()
                while pending:
                    frame = pending[0]
                    ticket = await self._intake.admit(client, len(frame.data))
                    pending.popleft()
                    pending_bytes -= len(frame.data)

                    def on_done(outcome: BatchOutcome, seq: int = frame.seq) -> None:
                        body = orjson.dumps({"seq": seq, **outcome.as_dict()})
                        loop.call_soon_threadsafe(ack, body)

                    self._intake.enqueue(
                        frame.data,
                        self.source,
                        on_done,
                        ticket=ticket,
                        rejection=frame.rejection,
                        origin=origin,
                    )

        admitter = asyncio.create_task(admit_in_order())
        seq = 0
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                seq += 1
                frame = self._frame(seq, message)
                if (
                    len(pending) >= self._pending_max_frames
                    or pending_bytes + len(frame.data) > self._pending_max_bytes
                ) and pending:
                    self.busy_frames += 1
                    ack(self._busy_ack(seq))
                else:
                    pending.append(frame)
                    pending_bytes += len(frame.data)
                    wake.set()
                if acks.qsize() > MAX_UNSENT_ACKS:
                    logger.warning("Closing a WebSocket whose client does not read its acks.")
                    await websocket.close(code=1008, reason="acks not read")
                    break
        except WebSocketDisconnect:
            pass
        finally:
            admitter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await admitter
            acks.put_nowait(None)
            sender.cancel()

    def _frame(self, seq: int, message: Mapping[str, Any]) -> _Frame:
        data = message.get("bytes")
        if isinstance(data, bytes):
            payload, rejection = self._intake.screen(data)
            return _Frame(seq, payload, rejection)
        text = str(message.get("text") or "").encode()
        rejection = Rejection(
            WHOLE_PAYLOAD,
            RejectReason.UNSUPPORTED_MEDIA_TYPE,
            "text frame: send EventBatch bytes in binary frames",
            text,
        ).bounded(self._kept)
        return _Frame(seq, rejection.raw, rejection)

    def _busy_ack(self, seq: int) -> bytes:
        return orjson.dumps(
            {
                "seq": seq,
                "accepted": 0,
                "duplicates": 0,
                "rejected": 0,
                "results": [],
                "error": "busy: intake queue full; frame not stored, resend it later",
                "retry_after_secs": self._retry_after,
            }
        )


def _client_key(websocket: WebSocket) -> str:
    return websocket.client.host if websocket.client is not None else ""


async def _send_acks(websocket: WebSocket, acks: asyncio.Queue[bytes | None]) -> None:
    while True:
        ack = await acks.get()
        if ack is None:
            return
        try:
            await websocket.send_text(ack.decode())
        except (WebSocketDisconnect, RuntimeError):
            return  # the client left; what it did not see acked it will resend
