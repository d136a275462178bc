"""Live consumers: WebSocket ``/v1/stream/{channel}`` relays a channel's messages.

The caller needs a token with the ``stream`` scope; a token bound to schools sees only
those schools' events. The first frame is a text frame ``{"subscribed": channel}``, sent
once the subscription is in place: everything published after it reaches the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable

import orjson
from google.protobuf.message import DecodeError
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from hopper.access import Scope
from hopper.edge.node import EdgeNode
from hopper.errors import HopperError
from hopper.events.protobuf import PbEvent
from hopper.ingest.websocket import accept_authenticated

logger = logging.getLogger(__name__)

SchoolOf = Callable[[bytes], str | None]


def _school_of_proto(message: bytes) -> str | None:
    try:
        return PbEvent.FromString(message).school_id
    except DecodeError:
        return None


def _school_of_json(message: bytes) -> str | None:
    try:
        school = orjson.loads(message).get("school_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return school if isinstance(school, str) else None


async def stream_channel(websocket: WebSocket) -> None:
    """Relay one channel: binary frames for ``protos``, text (JSON) frames for ``lp-events``."""
    node: EdgeNode = websocket.app.state.node
    channel = websocket.path_params["channel"]
    limit = node.settings.server.max_stream_subscribers
    if node.stream_subscribers >= limit:
        node.metrics.connections_refused.labels(reason="max_stream_subscribers").inc()
        await websocket.send_denial_response(
            JSONResponse(
                {"error": f"{limit} stream subscribers already (server.max_stream_subscribers)"},
                status_code=503,
                headers={"Retry-After": "5"},
            )
        )
        return
    node.stream_subscribers += 1  # counted from here: the token check may wait
    try:
        await _serve_stream(websocket, node, channel)
    finally:
        node.stream_subscribers -= 1


async def _serve_stream(websocket: WebSocket, node: EdgeNode, channel: str) -> None:
    principal = await accept_authenticated(websocket, node.authenticator, Scope.STREAM)
    if principal is None:
        return
    sink = node.stream_channels.get(channel)
    if sink is None:
        await websocket.close(code=1008, reason=f"unknown channel {channel[:60]!r}")
        return
    binary = sink.message_format == "protobuf"
    schools = principal.schools
    school_of = _school_of_proto if binary else _school_of_json
    try:
        subscription = await node.channels.subscribe(channel)
    except HopperError as exc:
        await websocket.close(code=1011, reason=str(exc)[:120])
        return
    relay: asyncio.Task[None] | None = None
    try:
        await websocket.send_text(orjson.dumps({"subscribed": channel}).decode())
        keep: SchoolOf | None = None if schools is None else school_of
        relay = asyncio.create_task(_relay(websocket, subscription, binary, keep, schools))
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
    websocket: WebSocket,
    subscription: AsyncGenerator[bytes, None],
    binary: bool,
    school_of: SchoolOf | None,
    schools: frozenset[str] | None,
) -> None:
    try:
        async for message in subscription:
            if school_of is not None and schools is not None and school_of(message) not in schools:
                continue  # another school's event: not for this token
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
