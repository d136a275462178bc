"""``/v1/devops``: devices, events and rejections per day, ingest, jobs (devops)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request, Response

from hopper.access import Scope
from hopper.edge.api.access import Caller, audience
from hopper.edge.api.paging import MAX_LIMIT, decode_cursor, page, with_etag
from hopper.jobs.history import last_runs
from hopper.store.analytics import an_runs, an_sessions
from hopper.store.schema import reader_events, reader_events_errors

if TYPE_CHECKING:
    from hopper.edge.node import EdgeNode


@dataclass(frozen=True)
class IntakeFigures:
    """The writer's figures the ingest report shows (read in the node's process)."""

    last_commit_ms: int | None
    depth: int
    capacity: int
    queue_bytes: int
    store_backend: str

    @classmethod
    def of(cls, node: EdgeNode) -> IntakeFigures:
        """Read the figures of the node's intake now."""
        intake = node.intake
        return cls(
            intake.last_commit_ms,
            intake.depth,
            intake.capacity,
            intake.admission.bytes,
            node.store.backend,
        )


router = APIRouter(prefix="/devops", tags=["devops"])

AUDIENCES = (Scope.DEVOPS,)
CallerDep = Annotated[Caller, Depends(audience(*AUDIENCES))]
DAY_MS = 86_400_000


@router.get("/devices", summary="Devices, last seen, with app version and platform")
def devices(
    request: Request,
    caller: CallerDep,
    after: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
) -> dict[str, Any]:
    """Each device's latest stored event: when, which app version, platform and school."""
    key = decode_cursor(after, (str,))
    with caller.engine.connect() as conn:
        rows = latest_devices(
            conn, caller.principal.schools, None if key is None else key[0], limit + 1
        )
    items = [
        {
            "device_id": r.device_id,
            "last_seen_ms": int(r.app_time_ms),
            "last_received_ms": int(r.received_ms),
            "app_version": r.app_version,
            "platform": r.platform,
            "school_id": r.school_id,
            "last_event": r.event_type,
        }
        for r in rows
    ]
    return page(items, limit, lambda item: [item["device_id"]])


@router.get("/events", summary="Events and rejections by reason, per day")
def events_per_day(
    request: Request, caller: CallerDep, days: Annotated[int, Query(ge=1, le=90)] = 14
) -> Response:
    """Per UTC day: events processed (by app time) and rejections recorded, by reason."""
    api = request.app.state.api
    today = datetime.fromtimestamp(api.clock.now_ms() / 1000, tz=UTC).date()
    first = today - timedelta(days=days - 1)
    first_ms = int(datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp() * 1000)
    err = reader_events_errors
    day_no = sa.cast(err.c.received_ms / DAY_MS, sa.BigInteger)
    with caller.engine.connect() as conn:
        events = {
            row.day: int(row.events)
            for row in conn.execute(
                sa.select(an_sessions.c.day, sa.func.sum(an_sessions.c.events).label("events"))
                .where(an_sessions.c.day >= first.isoformat())
                .group_by(an_sessions.c.day)
            )
        }
        rejected: dict[str, dict[str, int]] = {}
        for row in conn.execute(
            sa.select(day_no.label("day_no"), err.c.reason, sa.func.count().label("n"))
            .where(err.c.received_ms >= first_ms)
            .group_by(day_no, err.c.reason)
        ):
            day = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=int(row.day_no))).date()
            rejected.setdefault(day.isoformat(), {})[row.reason] = int(row.n)
    body = {
        "days": [
            {
                "day": day,
                "events": events.get(day, 0),
                "rejected": rejected.get(day, {}),
            }
            for day in ((first + timedelta(days=n)).isoformat() for n in range(days))
        ],
        "note": "events: by app-time day, as processing counted them; rejections: by UTC day "
        "received",
    }
    return with_etag(request, body)


@router.get("/ingest", summary="Ingest and processing lag, queue, error table size")
def ingest(request: Request, caller: CallerDep) -> dict[str, Any]:
    """How far behind the writer and the processing are, and what the queue holds."""
    api = request.app.state.api
    return ingest_status(api.intake_figures(), caller.engine, api.clock.now_ms())


@router.get("/jobs", summary="The last run of each job")
def jobs(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Each job's latest run: when, how long, whether it worked, its summary."""
    runs = last_runs(caller.engine)
    return {
        "jobs": [
            {
                "job": run.job,
                "started_ms": run.started_ms,
                "seconds": round((run.finished_ms - run.started_ms) / 1000, 3),
                "status": run.status,
                "summary": run.summary,
            }
            for run in sorted(runs.values(), key=lambda r: r.job)
        ]
    }


def latest_devices(
    conn: sa.Connection, schools: frozenset[str] | None, after: str | None, limit: int
) -> Sequence[Any]:
    """Each device's latest stored event (by device id, after ``after``), at most ``limit``."""
    e = reader_events
    # A GROUP BY over reader_events reads every row of the (device_id, id) index: seconds
    # at 10M events. Walking the distinct device ids one index seek at a time (a loose
    # index scan, which neither SQLite nor PostgreSQL does by itself) costs one seek per
    # device, and each device's newest id is one more.
    step = e.alias("step")
    anchor = sa.select(
        sa.func.min(e.c.device_id).label("device_id"), sa.literal(1, sa.Integer).label("n")
    )
    if after is not None:
        anchor = anchor.where(e.c.device_id > after)
    devices = anchor.cte("devices", recursive=True)
    more: sa.ColumnElement[bool] = devices.c.device_id.is_not(None)
    if schools is None:  # every device counts towards the page: stop the walk at its end
        more = sa.and_(more, devices.c.n < limit)
    devices = devices.union_all(
        sa.select(
            sa.select(sa.func.min(step.c.device_id))
            .where(step.c.device_id > devices.c.device_id)
            .scalar_subquery(),
            devices.c.n + 1,
        ).where(more)
    )
    newest = e.alias("newest")
    latest = (
        sa.select(
            devices.c.device_id,
            sa.select(sa.func.max(newest.c.id))
            .where(newest.c.device_id == devices.c.device_id)
            .scalar_subquery()
            .label("id"),
        )
        .where(devices.c.device_id.is_not(None))
        .subquery()
    )
    query = (
        sa.select(
            e.c.device_id,
            e.c.app_time_ms,
            e.c.received_ms,
            e.c.app_version,
            e.c.platform,
            e.c.school_id,
            e.c.event_type,
            e.c.username,
        )
        .join(latest, latest.c.id == e.c.id)
        .order_by(e.c.device_id)
        .limit(limit)
    )
    if schools is not None:
        query = query.where(e.c.school_id.in_(sorted(schools)))
    return conn.execute(query).all()


def last_status_payloads(conn: sa.Connection, device_ids: Sequence[str]) -> dict[str, Any]:
    """Each listed device's newest CAM status payload (walking its events newest first).

    A few index steps for a tablet that sends heartbeats; one that never sends any costs a
    walk over all its events (only when the live monitor is off).
    """
    e = reader_events
    out: dict[str, Any] = {}
    query = (
        sa.select(e.c.payload)
        .where(e.c.device_id == sa.bindparam("device"), e.c.event_type == "cam_status")
        .order_by(e.c.id.desc())
        .limit(1)
    )
    for device_id in device_ids:
        payload = conn.execute(query, {"device": device_id}).scalar()
        if payload is not None:
            out[device_id] = payload
    return out


def ingest_status(intake: IntakeFigures, engine: sa.Engine, now: int) -> dict[str, Any]:
    """How far behind the writer and the processing are, and what the queue holds."""
    with engine.connect() as conn:
        errors = conn.execute(sa.select(sa.func.count()).select_from(reader_events_errors)).scalar()
        last_id = conn.execute(sa.select(sa.func.max(reader_events.c.id))).scalar()
        run = conn.execute(
            sa.select(an_runs.c.finished_ms, an_runs.c.to_event_id)
            .where(an_runs.c.finished_ms.is_not(None))
            .order_by(an_runs.c.run_id.desc())
            .limit(1)
        ).first()
    last_commit = intake.last_commit_ms
    return {
        "last_commit_age_s": None if last_commit is None else round((now - last_commit) / 1000, 3),
        "queue_depth": intake.depth,
        "queue_capacity": intake.capacity,
        "queue_bytes": intake.queue_bytes,
        "error_rows": int(errors or 0),
        "events_not_yet_processed": int((last_id or 0) - (run.to_event_id if run else 0)),
        "last_processing_age_s": None if run is None else round((now - run.finished_ms) / 1000, 3),
        "store": intake.store_backend,
    }
