"""``/v1/students``: one student's summary, books, page times and timeline (apps, teachers)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response

from hopper.access import Scope
from hopper.edge.api.access import Caller, audience, refuse
from hopper.edge.api.paging import MAX_LIMIT, decode_cursor, page, with_etag
from hopper.store.analytics import (
    an_page_days,
    an_student_books,
    an_student_days,
    an_students,
)
from hopper.store.reference import ec_books, ec_students
from hopper.store.schema import reader_events

router = APIRouter(prefix="/students", tags=["students"])

AUDIENCES = (Scope.APPS, Scope.TEACHERS)
CallerDep = Annotated[Caller, Depends(audience(*AUDIENCES))]
Username = Annotated[str, Path(min_length=1, max_length=200, description="The student's username.")]
After = Annotated[str | None, Query(max_length=500, description="The `next` of the previous page.")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


def _check_student(caller: Caller, username: str) -> None:
    if not caller.may_read_student(username):
        raise refuse("this student")


def _minutes(ms: int | None) -> float:
    return round((ms or 0) / 60_000, 1)


@router.get("/{username}", summary="A student's summary")
def summary(request: Request, caller: CallerDep, username: Username) -> Response:
    """Reading and activity totals, active days and streaks, as processing last computed them."""
    _check_student(caller, username)
    with caller.engine.connect() as conn:
        body = student_summary(conn, username)
    if body is None:
        raise HTTPException(status_code=404, detail="no such student, or nothing processed yet")
    return with_etag(request, body)


@router.get("/{username}/books", summary="The books a student has read")
def student_books(
    request: Request, caller: CallerDep, username: Username, after: After = None, limit: Limit = 50
) -> Response:
    """Per book: pages read of its page count, minutes, last page, days read, completion."""
    _check_student(caller, username)
    key = decode_cursor(after, (str,))
    b = an_student_books
    query = (
        sa.select(b, ec_books.c.title)
        .select_from(b.outerjoin(ec_books, ec_books.c.book_id == b.c.book_id))
        .where(b.c.username == username)
        .order_by(b.c.book_id)
        .limit(limit + 1)
    )
    if key is not None:
        query = query.where(b.c.book_id > key[0])
    with caller.engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    items = [
        {
            "book_id": r["book_id"],
            "title": r["title"],
            "page_count": r["page_count"],
            "pages_read": r["pages_read"],
            "page_views": r["page_views"],
            "reading_minutes": _minutes(r["reading_ms"]),
            "last_page": r["last_page"],
            "last_read_ms": r["last_view_ms"],
            "days_read": r["days_read"],
            "first_day": r["first_day"],
            "last_day": r["last_day"],
            "completion": r["completion"],
            "is_completed": None if r["is_completed"] is None else bool(r["is_completed"]),
        }
        for r in rows
    ]
    return with_etag(request, page(items, limit, lambda item: [item["book_id"]]))


@router.get("/{username}/books/{book_id}/page-times", summary="Time on each page of a book")
def page_times(
    request: Request,
    caller: CallerDep,
    username: Username,
    book_id: Annotated[str, Path(min_length=1, max_length=200)],
    after: After = None,
    limit: Limit = 200,
) -> Response:
    """Per page of one book: views and reading seconds (clipped as processing defines)."""
    _check_student(caller, username)
    key = decode_cursor(after, (int,))
    p = an_page_days
    query = (
        sa.select(
            p.c.page,
            sa.func.sum(p.c.views).label("views"),
            sa.func.sum(p.c.reading_ms).label("reading_ms"),
            sa.func.max(p.c.last_view_ms).label("last_view_ms"),
        )
        .where(p.c.username == username, p.c.book_id == book_id)
        .group_by(p.c.page)
        .order_by(p.c.page)
        .limit(limit + 1)
    )
    if key is not None:
        query = query.where(p.c.page > key[0])
    with caller.engine.connect() as conn:
        rows = conn.execute(query).all()
    items = [
        {
            "page": int(r.page),
            "views": int(r.views),
            "reading_seconds": round(int(r.reading_ms) / 1000, 1),
            "last_view_ms": int(r.last_view_ms),
        }
        for r in rows
    ]
    return with_etag(request, page(items, limit, lambda item: [item["page"]]))


@router.get("/{username}/timeline", summary="A student's recent events, newest first")
def timeline(
    request: Request, caller: CallerDep, username: Username, after: After = None, limit: Limit = 50
) -> dict[str, Any]:
    """The stored events in readable form, newest app time first; ``after`` pages back."""
    _check_student(caller, username)
    key = decode_cursor(after, (int, int))
    e = reader_events
    query = (
        sa.select(
            e.c.id,
            e.c.app_time_ms,
            e.c.received_ms,
            e.c.event_type,
            e.c.book_id,
            e.c.page,
            e.c.device_id,
            e.c.payload,
        )
        .where(e.c.username == username)
        .order_by(e.c.app_time_ms.desc(), e.c.id.desc())
        .limit(limit + 1)
    )
    if key is not None:
        query = query.where(
            sa.or_(e.c.app_time_ms < key[0], sa.and_(e.c.app_time_ms == key[0], e.c.id < key[1]))
        )
    with caller.engine.connect() as conn:
        rows = conn.execute(query).all()
    items = [
        {
            "id": int(r.id),
            "time_ms": int(r.app_time_ms),
            "received_ms": int(r.received_ms),
            "type": r.event_type,
            "what": describe(r.event_type, _payload(r.payload)),
            "book_id": r.book_id,
            "page": r.page,
            "device_id": r.device_id,
            "payload": _payload(r.payload),
        }
        for r in rows
    ]
    return page(items, limit, lambda item: [item["time_ms"], item["id"]])


def _payload(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value  # JSONB on PostgreSQL
    loaded = orjson.loads(value or "{}")
    return loaded if isinstance(loaded, dict) else {}


def describe(event_type: str, payload: dict[str, Any]) -> str:
    """Say what an event was, in a few words."""
    book = payload.get("book_id") or ""
    match event_type:
        case "app_session_started":
            return "opened the app"
        case "app_session_ended":
            return "closed the app"
        case "book_opened":
            return f"opened book {book}"
        case "book_closed":
            return f"closed book {book}"
        case "page_viewed":
            seconds = round((payload.get("duration_ms") or 0) / 1000)
            return f"read page {payload.get('page')} of {book} ({seconds} s)"
        case "resource_opened":
            return f"opened resource {payload.get('resource_id')}"
        case "lp_step_completed":
            return f"completed step {payload.get('step_id')} of path {payload.get('lp_id')}"
        case "flashcard_reviewed":
            return f"reviewed card {payload.get('card_id')} of deck {payload.get('deck_id')}"
        case "cam_status":
            return "tablet status"
    return event_type


def student_summary(conn: sa.Connection, username: str) -> dict[str, Any] | None:
    """A student's totals as processing last computed them; None when nothing is known."""
    row = (
        conn.execute(sa.select(an_students).where(an_students.c.username == username))
        .mappings()
        .first()
    )
    who = (
        conn.execute(
            sa.select(
                ec_students.c.display_name, ec_students.c.school_id, ec_students.c.grade
            ).where(ec_students.c.username == username)
        )
        .mappings()
        .first()
    )
    if row is None and who is None:
        return None
    totals = conn.execute(
        sa.select(
            sa.func.coalesce(sa.func.sum(an_student_days.c.flashcard_reviews), 0),
            sa.func.coalesce(sa.func.sum(an_student_days.c.lp_steps), 0),
            sa.func.coalesce(sa.func.sum(an_student_days.c.pages_read), 0),
        ).where(an_student_days.c.username == username)
    ).one()
    books = conn.execute(
        sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(an_student_books.c.is_completed), 0),
        ).where(an_student_books.c.username == username)
    ).one()
    r = dict(row) if row is not None else {}
    return {
        "username": username,
        "display_name": who["display_name"] if who else None,
        "grade": who["grade"] if who else None,
        "school_id": r.get("school_id") or (who["school_id"] if who else None),
        "time_zone": r.get("time_zone"),
        "first_day": r.get("first_day"),
        "last_day": r.get("last_day"),
        "last_active_day": r.get("last_active_day"),
        "last_reading_day": r.get("last_reading_day"),
        "active_days": r.get("active_days", 0),
        "current_streak": r.get("current_streak", 0),
        "longest_streak": r.get("longest_streak", 0),
        "reading_minutes": _minutes(r.get("reading_ms")),
        "active_minutes": _minutes(r.get("active_ms")),
        "pages_read": int(totals[2]),
        "flashcard_reviews": int(totals[0]),
        "learning_path_steps": int(totals[1]),
        "books_started": int(books[0]),
        "books_completed": int(books[1]),
        "as_of_day": r.get("as_of_day"),
    }
