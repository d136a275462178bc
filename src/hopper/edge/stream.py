"""Live consumers: WebSocket ``/v1/stream/{channel}`` relays a channel's messages.

The first frame is a text frame ``{"subscribed": channel}``, sent once the subscription
is in place: everything published after it reaches the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from hopper.edge.node import EdgeNode
from hopper.errors import HopperError

logger = logging.getLogger(__name__)


async def stream_channel(websocket: WebSocket) -> None:
    """Relay one channel: binary frames for ``protos``, text (JSON) frames for ``lp-events``."""
    node: EdgeNode = websocket.app.state.node
    channel = websocket.path_params["channel"]
    sink = node.channel_names.get(channel)
    await websocket.accept()
    if sink is None:
        await websocket.close(code=1008, reason=f"unknown channel {channel!r}")
        return
    try:
        subscription = await node.channels.subscribe(channel)
    except HopperError as exc:
        await websocket.close(code=1011, reason=str(exc)[:120])
        return
    relay: asyncio.Task[None] | None = None
    try:
        await websocket.send_text(orjson.dumps({"subscribed": channel}).decode())
        relay = asyncio.create_task(_relay(websocket, subscription, binary=sink == "protos"))
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass  # consumers have nothing to say; this loop notices when they leave
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        if relay is not None:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
        await subscription.aclose()


async def _relay(
    websocket: WebSocket, subscription: AsyncGenerator[bytes, None], *, binary: bool
) -> None:
    try:
        async for message in subscription:
            if binary:
                await websocket.send_bytes(message)
            else:
                await websocket.send_text(message.decode())
    except (WebSocketDisconnect, RuntimeError):
        return
    except HopperError as exc:  # the backend went away: tell the consumer instead of going quiet
        logger.warning("Stream relay stopped: %s.", exc)
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await websocket.close(code=1011, reason="channel backend unavailable")
