"""WebSocket source: binary frames are batches, each answered by a JSON ack frame.

The n-th frame a client sends on a connection has sequence number n (from 1); acks carry
it, so a client can pipeline frames and resend those not acknowledged after a reconnect.
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from hopper.events.model import WHOLE_PAYLOAD, Rejection, RejectReason
from hopper.ingest.intake import BatchOutcome, Intake

logger = logging.getLogger(__name__)


class WebSocketEventReceiver:
    """Receives event batches over a WebSocket, acking each after its commit."""

    source = "websocket"

    def __init__(self, intake: Intake) -> None:
        self._intake = intake

    async def handle(self, websocket: WebSocket) -> None:
        """Serve one connection."""
        await websocket.accept()
        loop = asyncio.get_running_loop()
        acks: asyncio.Queue[bytes | None] = asyncio.Queue()
        sender = asyncio.create_task(_send_acks(websocket, acks))
        seq = 0
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                seq += 1
                data = message.get("bytes")
                rejection = None
                if data is None:
                    text = (message.get("text") or "").encode()
                    data = text
                    rejection = Rejection(
                        WHOLE_PAYLOAD,
                        RejectReason.UNSUPPORTED_MEDIA_TYPE,
                        "text frame: send EventBatch bytes in binary frames",
                        text,
                    )
                await self._intake.acquire()  # waits while the queue is full: back pressure

                def on_done(outcome: BatchOutcome, seq: int = seq) -> None:
                    ack = orjson.dumps({"seq": seq, **outcome.as_dict()})
                    loop.call_soon_threadsafe(acks.put_nowait, ack)

                self._intake.enqueue(data, self.source, on_done, rejection=rejection)
        except WebSocketDisconnect:
            pass
        finally:
            acks.put_nowait(None)
            sender.cancel()


async def _send_acks(websocket: WebSocket, acks: asyncio.Queue[bytes | None]) -> None:
    while True:
        ack = await acks.get()
        if ack is None:
            return
        try:
            await websocket.send_text(ack.decode())
        except (WebSocketDisconnect, RuntimeError):
            return  # the client left; what it did not see acked it will resend
