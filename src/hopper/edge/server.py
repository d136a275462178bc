"""The HTTP server at the edge of the process: uvicorn, with limits it lacks by itself.

uvicorn has no bound on open connections that covers WebSockets, and no time limit for a
request's headers, so a few hundred half-open connections (slowloris) would stay forever.
``ConnectionGuard`` adds both, through subclasses of uvicorn's own protocol classes:

- at most ``server.max_connections`` open connections (HTTP and WebSocket together); one
  more is answered ``503`` and closed at once;
- a request's headers must arrive within ``server.header_timeout_secs`` of its first
  byte (or of the connection's opening), else the connection is closed;
- a WebSocket frame over ``server.max_websocket_frame_bytes`` closes its connection (code
  1009, by the WebSocket library), counted here;
- when the server starts to stop, the ``on_shutdown`` callbacks run once: uvicorn waits
  for every response to finish, and a never-ending one (an SSE stream) must be told to.

Each refusal is counted in ``connections_refused_total{reason}``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import PayloadTooBig

from hopper.config import HopperSettings
from hopper.observe.metrics import HopperMetrics

logger = logging.getLogger(__name__)

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: 41\r\n\r\n"
    b'{"error": "too many connections; retry"}\n'
)


class ConnectionGuard:
    """Counts open connections and enforces the limits above; shared by all protocols."""

    def __init__(self, settings: HopperSettings, metrics: HopperMetrics) -> None:
        self.max_connections = settings.server.max_connections
        self.header_timeout = settings.server.header_timeout_secs
        self._metrics = metrics
        self._open: set[Any] = set()
        self._on_shutdown: list[Callable[[], None]] = []
        self.is_shutting_down = False

    @property
    def open_connections(self) -> int:
        """Return how many connections are open."""
        return len(self._open)

    def admit(self, transport: Any) -> bool:
        """Count a new connection; False (refused, counted) when the limit is reached."""
        if transport in self._open:
            return True  # the same connection, upgraded to a WebSocket
        if len(self._open) >= self.max_connections:
            self.refused("max_connections")
            return False
        self._open.add(transport)
        self._metrics.connections_open.set(len(self._open))
        return True

    def forget(self, transport: Any) -> None:
        """Uncount a closed connection."""
        self._open.discard(transport)
        self._metrics.connections_open.set(len(self._open))

    def on_shutdown(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when the server starts to stop (before it waits)."""
        self._on_shutdown.append(callback)

    def shutting_down(self) -> None:
        """Run the shutdown callbacks (once)."""
        if self.is_shutting_down:
            return
        self.is_shutting_down = True
        for callback in self._on_shutdown:
            try:
                callback()
            except Exception:  # one part's failure must not keep the server from stopping
                logger.exception("A shutdown callback failed.")

    def refused(self, reason: str) -> None:
        """Count a connection refused or closed by a limit."""
        self._metrics.connections_refused.labels(reason=reason).inc()

    def protocols(self) -> tuple[type[HttpToolsProtocol], type[WebSocketsSansIOProtocol]]:
        """Return uvicorn protocol classes bound to this guard."""
        guard = self

        class GuardedHttpProtocol(HttpToolsProtocol):
            _header_timer: asyncio.TimerHandle | None = None

            def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
                super().connection_made(transport)
                if not guard.admit(transport):
                    transport.write(_BUSY)
                    transport.close()
                    return
                self._start_header_timer()

            def connection_lost(self, exc: Exception | None) -> None:
                self._stop_header_timer()
                guard.forget(self.transport)
                super().connection_lost(exc)

            def on_message_begin(self) -> None:
                super().on_message_begin()
                self._start_header_timer()

            def on_headers_complete(self) -> None:
                self._stop_header_timer()
                super().on_headers_complete()

            def shutdown(self) -> None:
                guard.shutting_down()  # end never-ending responses, so they can complete
                super().shutdown()

            def _start_header_timer(self) -> None:
                if self._header_timer is None:
                    self._header_timer = self.loop.call_later(
                        guard.header_timeout, self._headers_too_slow
                    )

            def _stop_header_timer(self) -> None:
                if self._header_timer is not None:
                    self._header_timer.cancel()
                    self._header_timer = None

            def _headers_too_slow(self) -> None:
                self._header_timer = None
                if not self.transport.is_closing():
                    guard.refused("header_timeout")
                    self.transport.close()

        class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
            _counted_too_big = False

            def connection_made(self, transport: Any) -> None:
                guard.admit(transport)  # already counted by the HTTP protocol it upgrades
                super().connection_made(transport)

            def connection_lost(self, exc: Exception | None) -> None:
                guard.forget(self.transport)
                super().connection_lost(exc)

            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                if isinstance(self.conn.parser_exc, PayloadTooBig) and not self._counted_too_big:
                    self._counted_too_big = True
                    guard.refused("websocket_frame_too_large")

        return GuardedHttpProtocol, GuardedWebSocketProtocol


def uvicorn_config(app: Any, settings: HopperSettings, guard: ConnectionGuard) -> uvicorn.Config:
    """Return the uvicorn configuration of a Hopper node, with the guard's protocols."""
    http_protocol, ws_protocol = guard.protocols()
    return uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        ws=ws_protocol,
        ws_max_size=settings.server.max_websocket_frame_bytes,
        http=http_protocol,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        lifespan="on",
        access_log=False,
        log_level="warning",
        log_config=None,
    )
