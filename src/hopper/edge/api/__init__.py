"""The analytics API (``/v1/students``, ``/portal``, ``/devops``, ``/ec``, ``/monitor``).

JSON over the derived tables (``an_*``), the reference data (``ec_*``) and the events;
versioned under ``/v1``; OpenAPI at ``/v1/openapi.json`` (browsable at ``/docs``). Each
endpoint takes a bearer token with the scope of its audience (apps, portal, devops, ec,
teachers), and a token bound to a student, a teacher or schools sees only theirs. Lists
page with an ``after`` cursor; reports carry an ``ETag``. Bad parameters get a 4xx; a
store that does not answer, a 503 with ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from hopper import __version__
from hopper.access import Authenticator
from hopper.clock import Clock
from hopper.edge.api import devops, ec, monitor, portal, students
from hopper.edge.api.devops import IntakeFigures
from hopper.edge.api.reports import ReportCache
from hopper.edge.api.timing import RequestTimer
from hopper.observe.metrics import HopperMetrics

if TYPE_CHECKING:
    from hopper.edge.monitor import MonitorBoard
    from hopper.edge.node import EdgeNode


@dataclass
class AnalyticsApi:
    """What the API's handlers share: the store, tokens, clock, the writer's figures, reports."""

    engine: sa.Engine
    authenticator: Authenticator
    clock: Clock
    intake_figures: Callable[[], IntakeFigures]
    monitor: MonitorBoard | None
    metrics: HopperMetrics
    monitor_off: str = "the live monitor is off (no 'monitor' in pipeline.edge.sinks)"
    reports: ReportCache = field(default_factory=ReportCache)

    @classmethod
    def of_node(cls, node: EdgeNode, engine: sa.Engine) -> AnalyticsApi:
        """The API in the node's own process: its intake and monitor at hand."""
        return cls(
            engine,
            node.authenticator,
            node.clock,
            lambda: IntakeFigures.of(node),
            node.monitor,
            node.metrics,
        )


def create_api(shared: AnalyticsApi) -> FastAPI:
    """Build the analytics API over what its handlers share (the store's engine first)."""
    api = FastAPI(
        title="Hopper analytics API",
        version=__version__,
        docs_url=None,  # served at /docs by the edge app, with assets that need no internet
        redoc_url=None,
        openapi_url="/openapi.json",
        description=(__doc__ or "").strip(),
    )
    api.state.api = shared
    api.add_middleware(RequestTimer, metrics=shared.metrics)
    for router in (students.router, portal.router, devops.router, ec.router, monitor.router):
        api.include_router(router)

    @api.exception_handler(sa.exc.OperationalError)
    @api.exception_handler(sa.exc.InterfaceError)
    async def store_unavailable(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": "the store does not answer; retry later"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    return api


__all__ = ["AnalyticsApi", "create_api"]
