"""Staff, IT and admin pages: school overview (+ CSV), devices, server status, settings, about.

The school trend and the classes table read the same rollups as the teacher pages; the
devices list reuses the devops API's query; the server page is ``/health``'s report plus
the devops ingest figures and the job history, so the three never disagree.
"""

from __future__ import annotations

import csv
import io
import time
from collections import deque
from datetime import timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from hopper.config import ProcessingSettings
from hopper.edge.api.devops import (
    IntakeFigures,
    ingest_status,
    last_status_payloads,
    latest_devices,
)
from hopper.edge.health import health_report
from hopper.edge.pages.classes import members, school_day, week_figures
from hopper.edge.pages.i18n import N_
from hopper.edge.pages.site import HIDE_NAMES, check_csrf, open_page, read_form, redirect
from hopper.jobs.history import last_runs
from hopper.store.analytics import an_runs, an_student_days
from hopper.store.schema import reader_events

TREND_DAYS = 30
MAX_DEVICES = 2000


def _school_rows(page: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    with page.connect() as conn:
        today = school_day(conn, page, None)
        first = (today - timedelta(days=6)).isoformat()
        classes = []
        for klass in conn.execute(page.scope.classes()).mappings():
            usernames = page.scope.usernames(klass["class_id"])
            students = conn.execute(
                sa.select(sa.func.count()).select_from(usernames.subquery())
            ).scalar()
            classes.append(
                {**klass, "students": int(students or 0), **week_figures(conn, usernames, first)}
            )
        d = an_student_days
        start = (today - timedelta(days=TREND_DAYS - 1)).isoformat()
        by_day = {
            r.day: r
            for r in conn.execute(
                sa.select(
                    d.c.day,
                    sa.func.sum(d.c.reading_ms).label("reading_ms"),
                    sa.func.sum(d.c.is_active).label("active"),
                )
                .where(d.c.day >= start, d.c.username.in_(page.scope.usernames()))
                .group_by(d.c.day)
            )
        }
    trend = []
    for n in range(TREND_DAYS):
        day = (today - timedelta(days=TREND_DAYS - 1 - n)).isoformat()
        r = by_day.get(day)
        trend.append(
            {
                "day": day,
                "minutes": round(int(r.reading_ms) / 60_000) if r else 0,
                "active": int(r.active) if r else 0,
            }
        )
    return classes, trend, first


def school_page(request: Request) -> Response:
    """The school overview: a classes table and the trend of reading minutes."""
    page = open_page(request)
    page.scope.require("school")
    classes, trend, first = _school_rows(page)
    return page.render("school.html", classes=classes, trend=trend, first_day=first)


SCHOOL_COLUMNS = (
    ("name", N_("Class")),
    ("grade", N_("Grade")),
    ("students", N_("Students")),
    ("active", N_("Active this week")),
    ("reading_minutes", N_("Reading minutes this week")),
    ("books", N_("Books")),
    ("flashcard_reviews", N_("Flashcard reviews")),
    ("lp_steps", N_("Path steps")),
)


def school_csv(request: Request) -> Response:
    """The classes table as CSV, the same columns as the page."""
    page = open_page(request)
    page.scope.require("school")
    classes, _, _ = _school_rows(page)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([page.gettext(header) for _, header in SCHOOL_COLUMNS])
    for row in classes:
        writer.writerow([row.get(key) if key != "name" else row["name"] or row["class_id"]
                         for key, _ in SCHOOL_COLUMNS])  # fmt: skip
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": 'attachment; filename="school-classes.csv"'},
    )


def devices_page(request: Request) -> Response:
    """Every tablet: its student, last seen, battery, app version and platform."""
    page = open_page(request)
    page.scope.require("devices")
    with page.connect() as conn:
        rows = latest_devices(conn, None, None, MAX_DEVICES)
        board = getattr(page.site.node, "monitor", None)
        battery: dict[str, Any] = {}
        if board is not None:  # the live monitor holds each tablet's last CAM status
            battery = {tile.device_id: tile.battery_pct for tile in board.device_tiles()}
        else:  # the monitor is off: each listed tablet's newest stored status instead
            for device_id, payload in last_status_payloads(
                conn, [r.device_id for r in rows]
            ).items():
                status = payload if isinstance(payload, dict) else orjson.loads(payload or "{}")
                battery[device_id] = status.get("battery_pct")
        names = members(conn, page.scope, None) if page.scope.may("classes") else {}
    now = page.site.clock.now_ms()
    devices = [
        {
            "device_id": r.device_id,
            "student": names.get(r.username) or page.scope.name(r.username, None),
            "last_seen_ms": int(r.app_time_ms),
            "age_s": max(0, now - int(r.app_time_ms)) // 1000,
            "battery": battery.get(r.device_id),
            "app_version": r.app_version,
            "platform": r.platform,
            "school_id": r.school_id,
        }
        for r in rows
    ]
    return page.render("devices.html", devices=devices, limit=MAX_DEVICES)


class IngestRate:
    """Events stored per second, from the growth of ``reader_events.id`` between looks."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque(maxlen=32)

    def sample(self, last_id: int) -> float | None:
        """Record the newest id; return the rate over the last minute or so."""
        now = time.monotonic()
        self._samples.append((now, last_id))
        while len(self._samples) > 2 and now - self._samples[0][0] > 60:
            self._samples.popleft()
        first_t, first_id = self._samples[0]
        if now - first_t < 1:
            return None
        return (last_id - first_id) / (now - first_t)


async def server_page(request: Request) -> Response:
    """Ingest rate, queue, errors, disk, processing lag and the last run of each job."""
    page = await run_in_threadpool(open_page, request)
    page.scope.require("server")
    site = page.site
    node = site.node
    status, health = await health_report(node)

    def read() -> dict[str, Any]:
        ingest = ingest_status(IntakeFigures.of(node), site.engine, site.clock.now_ms())
        with site.engine.connect() as conn:
            last_id = int(conn.execute(sa.select(sa.func.max(reader_events.c.id))).scalar() or 0)
            stored = conn.execute(sa.select(sa.func.count()).select_from(an_runs)).scalar()
        runs = sorted(last_runs(site.engine).values(), key=lambda r: r.job)
        rate: IngestRate = request.app.state.ingest_rate
        return {
            "ingest": ingest,
            "rate": rate.sample(last_id),
            "last_id": last_id,
            "processing_runs": int(stored or 0),
            "jobs": runs,
        }

    values = await run_in_threadpool(read)
    return await run_in_threadpool(
        lambda: page.render("server.html", health=health, health_status=status, **values)
    )


def about_page(request: Request) -> Response:
    """How each number is measured, from the processing's own settings."""
    page = open_page(request)
    processing: ProcessingSettings = page.site.settings.processing
    fields = [
        (name, getattr(processing, name), info.description)
        for name, info in ProcessingSettings.model_fields.items()
    ]
    return page.render("about.html", p=processing, fields=fields, mon=page.site.settings.monitor)


def settings_page(request: Request) -> Response:
    """The admin's settings: hide student names; the accounts (read only)."""
    page = open_page(request)
    page.scope.require("settings")
    return page.render(
        "settings.html", hide_names=page.scope.hide_names, users=page.site.users.all()
    )


async def save_settings(request: Request) -> Response:
    """Save the admin's settings."""
    page = await run_in_threadpool(open_page, request)
    page.scope.require("settings")
    form = await read_form(request)
    check_csrf(form, page.session.csrf_token)
    value = "1" if form.get("hide_names") == "1" else "0"
    await run_in_threadpool(
        page.site.users.set_setting, HIDE_NAMES, value, page.site.clock.now_ms()
    )
    return redirect("/ui/settings")


def routes() -> list[BaseRoute]:
    """The staff, IT, admin and everyone's pages' routes."""
    return [
        Route("/school", school_page),
        Route("/school.csv", school_csv),
        Route("/devices", devices_page),
        Route("/server", server_page),
        Route("/about", about_page),
        Route("/settings", settings_page, methods=["GET"]),
        Route("/settings", save_settings, methods=["POST"]),
    ]
