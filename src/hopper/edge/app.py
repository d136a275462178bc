"""create_app: the edge node's ASGI application and its background work."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi.openapi.docs import get_swagger_ui_html
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from hopper import __version__
from hopper.access import AuthError, Scope
from hopper.clock import Clock
from hopper.config import HopperSettings
from hopper.edge.api import AnalyticsApi, create_api
from hopper.edge.health import HEALTH_MEDIA_TYPE, health_report
from hopper.edge.jobs import EDGE_JOBS
from hopper.edge.node import EdgeNode
from hopper.edge.pages import create_pages
from hopper.edge.stream import stream_channel
from hopper.ingest import HttpEventReceiver, WebSocketEventReceiver
from hopper.ingest.http import auth_error_response, authenticate_request
from hopper.jobs import run_scheduler
from hopper.store.engine import engine_for
from hopper.web import STATIC_DIR


def create_app(
    settings: HopperSettings, *, clock: Clock | None = None, run_jobs: bool = True
) -> Starlette:
    """Build the edge app; its parts start and stop with the ASGI lifespan."""
    node = EdgeNode(settings, clock)
    engine = engine_for(settings.store)  # readers beside the writer: API and job history
    sources = node.sources

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        node.start()
        jobs = (
            asyncio.create_task(run_scheduler(settings, node.clock, EDGE_JOBS))
            if run_jobs
            else None
        )
        try:
            yield
        finally:
            if jobs is not None:
                jobs.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await jobs
            await asyncio.to_thread(node.stop)
            engine.dispose()

    async def health(request: Request) -> Response:
        status, body = await health_report(node)
        return JSONResponse(body, status_code=status, media_type=HEALTH_MEDIA_TYPE)

    async def metrics(request: Request) -> Response:
        if not node.authenticator.is_metrics_open:
            try:
                await authenticate_request(request, node.authenticator, Scope.METRICS)
            except AuthError as exc:
                return auth_error_response(exc)
        return Response(node.metrics.exposition(), media_type="text/plain; version=0.0.4")

    async def index(request: Request) -> Response:
        if settings.ui.enabled and "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("/ui/", status_code=307)  # a browser: the pages
        return JSONResponse(
            {
                "service": "hopper-edge",
                "version": __version__,
                "endpoints": {
                    "events_http": "/v1/events" if "http" in sources else None,
                    "events_websocket": "/v1/events/ws" if "websocket" in sources else None,
                    "stream": [f"/v1/stream/{name}" for name in node.stream_channels],
                    "health": "/health",
                    "metrics": "/metrics",
                    "analytics_api": "/v1/openapi.json",
                    "api_docs": "/docs",
                    "ui": "/ui/" if settings.ui.enabled else None,
                },
            }
        )

    routes: list[BaseRoute] = [
        Route("/", index),
        Route("/health", health),
        Route("/metrics", metrics),
        WebSocketRoute("/v1/stream/{channel}", stream_channel),
    ]
    if "http" in sources:
        receiver = HttpEventReceiver(
            node.intake,
            node.authenticator,
            max_body_bytes=settings.ingest.max_body_bytes,
            retry_after_secs=settings.ingest.retry_after_secs,
            admission_wait_secs=settings.ingest.http_admission_wait_secs,
            body_timeout_secs=settings.server.body_timeout_secs,
            ack_timeout_secs=settings.ingest.http_ack_timeout_secs,
            error_raw_max_bytes=settings.ingest.error_raw_max_bytes,
        )
        routes += receiver.routes()
    if "websocket" in sources:
        ws_receiver = WebSocketEventReceiver(
            node.intake,
            node.authenticator,
            pending_max_bytes=settings.ingest.websocket_pending_max_bytes,
            pending_max_frames=settings.ingest.websocket_pending_max_frames,
            retry_after_secs=settings.ingest.retry_after_secs,
            error_raw_max_bytes=settings.ingest.error_raw_max_bytes,
        )
        routes += ws_receiver.routes()

    async def docs(request: Request) -> Response:
        return get_swagger_ui_html(
            openapi_url="/v1/openapi.json",
            title="Hopper analytics API",
            swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/swagger-ui/favicon.png",
        )

    if settings.ui.enabled:
        # The web pages; their sessions are cookies, not the API's bearer tokens.
        routes.append(Mount("/ui", create_pages(settings, engine, node.clock, node)))
    routes += [
        Route("/docs", docs),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        # Last: everything else under /v1 is the analytics API.
        Mount("/v1", create_api(AnalyticsApi.of_node(node, engine))),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.node = node
    app.state.monitor = node.monitor  # the live monitor's board, for the pages (or None)
    app.state.guard = node.guard
    return app
