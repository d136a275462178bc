"""``/v1/portal``: a school's or class's activity, reading, top books, paths (portal, teachers).

Days are the school's (``ec_schools.time_zone``, UTC when unknown), as processing counts
them; "today" is the day of the node's clock in that zone.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response

from hopper.access import Scope
from hopper.edge.api.access import Caller, audience, refuse
from hopper.edge.api.reports import Report
from hopper.edge.processing.timezones import zone
from hopper.store.analytics import an_learning_paths, an_student_books, an_student_days, an_students
from hopper.store.reference import (
    ec_books,
    ec_class_members,
    ec_classes,
    ec_learning_paths,
    ec_schools,
    ec_students,
)

router = APIRouter(prefix="/portal", tags=["portal"])

AUDIENCES = (Scope.PORTAL, Scope.TEACHERS)
CallerDep = Annotated[Caller, Depends(audience(*AUDIENCES))]
Id = Annotated[str, Path(min_length=1, max_length=200)]
Days = Annotated[int, Query(ge=1, le=366, description="Days of reading minutes to list.")]


def _today(clock_ms: int, time_zone: str | None) -> date:
    return datetime.fromtimestamp(clock_ms / 1000, tz=zone(time_zone or "")).date()


def _day_end_ms(today: date, time_zone: str | None) -> int:
    """Return when ``today`` ends in the school's zone: a report's "today" is stale then."""
    midnight = datetime.combine(today + timedelta(days=1), time(), tzinfo=zone(time_zone or ""))
    return int(midnight.timestamp() * 1000)


def class_usernames(class_id: str) -> sa.Select[Any]:
    """Select the usernames of a class's members (``ec_class_members``)."""
    return (
        sa.select(ec_students.c.username)
        .select_from(
            ec_class_members.join(
                ec_students, ec_students.c.student_id == ec_class_members.c.student_id
            )
        )
        .where(ec_class_members.c.class_id == class_id)
    )


def school_today(clock_ms: int, time_zone: str | None) -> date:
    """Return today's date in a school's time zone (UTC when unknown)."""
    return _today(clock_ms, time_zone)


def report(
    conn: sa.Connection,
    usernames: sa.Select[Any],
    today: date,
    days: int,
) -> dict[str, Any]:
    """The portal's figures over the students ``usernames`` selects."""
    d = an_student_days
    ago = {n: (today - timedelta(days=n - 1)).isoformat() for n in (1, 7, 30)}
    first = (today - timedelta(days=days - 1)).isoformat()
    students = conn.execute(sa.select(sa.func.count()).select_from(usernames.subquery())).scalar()
    active = {
        name: conn.execute(
            sa.select(sa.func.count(sa.distinct(d.c.username))).where(
                d.c.username.in_(usernames), d.c.is_active == 1, d.c.day >= ago[n]
            )
        ).scalar()
        for name, n in (("today", 1), ("last_7_days", 7), ("last_30_days", 30))
    }
    by_day = {
        row.day: row.reading_ms
        for row in conn.execute(
            sa.select(d.c.day, sa.func.sum(d.c.reading_ms).label("reading_ms"))
            .where(d.c.username.in_(usernames), d.c.day >= first)
            .group_by(d.c.day)
        )
    }
    reading = [
        {"day": day, "minutes": round(int(by_day.get(day, 0)) / 60_000, 1)}
        for day in ((today - timedelta(days=n)).isoformat() for n in range(days - 1, -1, -1))
    ]
    b = an_student_books
    books = conn.execute(
        sa.select(
            b.c.book_id,
            ec_books.c.title,
            sa.func.count().label("readers"),
            sa.func.sum(b.c.reading_ms).label("reading_ms"),
            sa.func.coalesce(sa.func.sum(b.c.is_completed), 0).label("completed"),
        )
        .select_from(b.outerjoin(ec_books, ec_books.c.book_id == b.c.book_id))
        .where(b.c.username.in_(usernames))
        .group_by(b.c.book_id, ec_books.c.title)
        .order_by(sa.desc("reading_ms"), b.c.book_id)
        .limit(10)
    ).all()
    lp = an_learning_paths
    paths = conn.execute(
        sa.select(
            lp.c.lp_id,
            ec_learning_paths.c.title,
            sa.func.count().label("students"),
            sa.func.count(lp.c.completed_ms).label("completed"),
            sa.func.avg(lp.c.progress).label("progress"),
        )
        .select_from(lp.outerjoin(ec_learning_paths, ec_learning_paths.c.lp_id == lp.c.lp_id))
        .where(lp.c.username.in_(usernames))
        .group_by(lp.c.lp_id, ec_learning_paths.c.title)
        .order_by(lp.c.lp_id)
    ).all()
    return {
        "today": today.isoformat(),
        "students": int(students or 0),
        "active_students": {k: int(v or 0) for k, v in active.items()},
        "reading_minutes_by_day": reading,
        "top_books": [
            {
                "book_id": r.book_id,
                "title": r.title,
                "readers": int(r.readers),
                "reading_minutes": round(int(r.reading_ms or 0) / 60_000, 1),
                "completed": int(r.completed),
            }
            for r in books
        ],
        "learning_paths": [
            {
                "lp_id": r.lp_id,
                "title": r.title,
                "students": int(r.students),
                "completed": int(r.completed),
                "completion_share": round(int(r.completed) / int(r.students), 3),
                "mean_progress": None if r.progress is None else round(float(r.progress), 3),
            }
            for r in paths
        ],
    }


@router.get("/schools/{school_id}", summary="A school's activity and reading")
def school(request: Request, caller: CallerDep, school_id: Id, days: Days = 30) -> Response:
    """Active students today / 7 d / 30 d, reading minutes a day, top books, path completion."""
    if not caller.may_read_school(school_id):
        raise refuse("this school")
    api = request.app.state.api
    now_ms = api.clock.now_ms()
    with caller.engine.connect() as conn:

        def compute() -> tuple[dict[str, Any], int]:
            found = conn.execute(
                sa.select(ec_schools.c.name, ec_schools.c.time_zone).where(
                    ec_schools.c.school_id == school_id
                )
            ).first()
            usernames = sa.select(an_students.c.username).where(
                an_students.c.school_id == school_id
            )
            if found is None and conn.execute(usernames.limit(1)).first() is None:
                raise HTTPException(
                    status_code=404, detail="no such school, or nothing processed yet"
                )
            time_zone = found.time_zone if found is not None else None
            today = _today(now_ms, time_zone)
            body = {
                "school_id": school_id,
                "name": found.name if found is not None else None,
                "time_zone": time_zone or "UTC",
                **report(conn, usernames, today, days),
            }
            return body, _day_end_ms(today, time_zone)

        kept: Report = api.reports.report(conn, ("school", school_id, days), now_ms, compute)
    return kept.response(request)


@router.get("/classes/{class_id}", summary="A class's activity and reading")
def klass(request: Request, caller: CallerDep, class_id: Id, days: Days = 30) -> Response:
    """The same figures over the class's members (``ec_class_members``)."""
    if not caller.may_read_class(class_id):
        raise refuse("this class")
    api = request.app.state.api
    now_ms = api.clock.now_ms()
    with caller.engine.connect() as conn:

        def compute() -> tuple[dict[str, Any], int]:
            found = conn.execute(
                sa.select(ec_classes.c.name, ec_classes.c.school_id, ec_schools.c.time_zone)
                .select_from(
                    ec_classes.outerjoin(
                        ec_schools, ec_schools.c.school_id == ec_classes.c.school_id
                    )
                )
                .where(ec_classes.c.class_id == class_id)
            ).first()
            if found is None:
                raise HTTPException(status_code=404, detail="no such class")
            today = _today(now_ms, found.time_zone)
            body = {
                "class_id": class_id,
                "name": found.name,
                "school_id": found.school_id,
                "time_zone": found.time_zone or "UTC",
                **report(conn, class_usernames(class_id), today, days),
            }
            return body, _day_end_ms(today, found.time_zone)

        kept: Report = api.reports.report(conn, ("class", class_id, days), now_ms, compute)
    return kept.response(request)


def utc_day(ms: int) -> str:
    """Return the UTC day of a time."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).date().isoformat()
