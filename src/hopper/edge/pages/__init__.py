"""The school's analytics web pages at ``/ui/``: server-rendered, scoped, translated.

Routes by audience: ``classes`` (teacher pages), ``students`` (the table, its CSV, one
student), ``live`` (the live classroom and seats), ``school`` (staff, IT, admin, about),
``auth`` (login, logout, preferences). Every handler opens its ``Page`` through
``site.open_page``, which holds the user's ``ViewScope``. Answers carry a strict
Content-Security-Policy: scripts only from ``/static``, no inline script.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hopper.clock import Clock
from hopper.config import HopperSettings
from hopper.edge.pages import auth, classes, live, school, students
from hopper.edge.pages.i18n import N_
from hopper.edge.pages.school import IngestRate
from hopper.edge.pages.site import LoginRequired, Site, login_url, site_of

logger = logging.getLogger(__name__)

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
        b"form-action 'self'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"private, no-store"),
]


class SecurityHeaders:
    """Adds the pages' security headers to every answer (pure ASGI: streams pass through)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Wrap ``send`` to add the headers to the response start."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *((n, v) for n, v in SECURITY_HEADERS if n not in names),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_pages(settings: HopperSettings, engine: sa.Engine, clock: Clock, node: Any) -> Starlette:
    """Build the pages' app (mounted at ``/ui`` by the edge app)."""
    site = Site.create(settings, engine, clock, node)

    async def login_required(request: Request, exc: Exception) -> Response:
        if request.headers.get("hx-request") == "true":
            return Response(status_code=401, headers={"hx-redirect": login_url(request)})
        return Response(status_code=303, headers={"location": login_url(request)})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        language = site_of(request).language_of(request, None)
        return site_of(request).render(
            request,
            "error.html",
            {"status": exc.status_code, "detail": exc.detail},
            language=language,
            status=exc.status_code,
        )

    async def store_down(request: Request, exc: Exception) -> Response:
        logger.warning("A page could not read the store: %s.", type(exc).__name__)
        language = site_of(request).language_of(request, None)
        response = site_of(request).render(
            request,
            "error.html",
            {"status": 503, "detail": N_("The store does not answer; try again in a moment.")},
            language=language,
            status=503,
        )
        response.headers["retry-after"] = "5"
        return response

    app = Starlette(
        routes=[
            *auth.routes(),
            *classes.routes(),
            *students.routes(),
            *live.routes(),
            *school.routes(),
        ],
        exception_handlers={
            LoginRequired: login_required,
            HTTPException: http_error,
            sa.exc.OperationalError: store_down,
            sa.exc.InterfaceError: store_down,
        },
    )
    app.state.site = site
    app.state.ingest_rate = IngestRate()
    app.add_middleware(SecurityHeaders)
    return app


__all__ = ["Site", "create_pages"]
