"""Time each analytics API request, by endpoint and status class, into the process's metrics.

The time is to the response's first byte (its status line), so a live monitor stream
counts its start, not its whole life. The ``endpoint`` label is the route's template
(``/v1/students/{username}``), never the path a client sent: a client cannot grow the
metrics by inventing paths (an unknown one is ``unmatched``).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hopper.observe.metrics import HopperMetrics


class RequestTimer:
    """ASGI middleware: observe ``api_request_seconds`` when the response starts."""

    def __init__(self, app: ASGIApp, metrics: HopperMetrics) -> None:
        self.app = app
        self._seconds = metrics.api_request_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; observe its time when the response starts (or fails)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        observed = False

        def observe(status: int) -> None:
            nonlocal observed
            observed = True
            # Only the API's own routes: an unknown path leaves the enclosing Mount there.
            route: Any = scope.get("route")
            endpoint = (
                scope.get("root_path", "") + route.path
                if isinstance(route, APIRoute)
                else "unmatched"
            )
            self._seconds.labels(endpoint=endpoint, status=f"{status // 100}xx").observe(
                time.perf_counter() - started
            )

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start" and not observed:
                observe(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except Exception:
            if not observed:
                observe(500)
            raise
