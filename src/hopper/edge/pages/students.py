"""The students table (period, search, sort, 50 a page, CSV of the same rows) and one student.

The table and its CSV are built by one function from the same query string, so the CSV
holds exactly the rows (every page of them) and columns the table shows, numbers as
numbers. A sort or filter is a plain link or form (the URL says it all); with htmx the
same URL answers only the table.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from hopper.edge.api.students import student_summary
from hopper.edge.pages.classes import class_id_of, members, school_day
from hopper.edge.pages.i18n import N_
from hopper.edge.pages.site import PAGE_SIZE, Page, open_page
from hopper.store.analytics import (
    an_flashcard_decks,
    an_lp_step_days,
    an_page_days,
    an_sessions,
    an_student_books,
    an_student_days,
    an_students,
)
from hopper.store.reference import ec_books, ec_lp_steps

PERIODS = {"7": 7, "30": 30, "90": 90, "all": None}
# Column key -> (header, whether it sorts high-to-low first).
COLUMNS: dict[str, tuple[str, bool]] = {
    "name": (N_("Student"), False),
    "minutes": (N_("Reading minutes"), True),
    "active_days": (N_("Active days"), True),
    "pages": (N_("Pages read"), True),
    "books": (N_("Books"), True),
    "reviews": (N_("Flashcard reviews"), True),
    "steps": (N_("Path steps"), True),
    "last_active": (N_("Last active"), True),
}
MAX_QUERY = 100
_FORMULA = re.compile(r"^[=+\-@\t\r]")


@dataclass
class StudentTable:
    """One view of the students table: its parameters, every matching row and this page's."""

    period: str
    query: str
    sort: str
    direction: str
    page_no: int
    rows: list[dict[str, Any]]
    first_day: str | None

    @property
    def pages(self) -> int:
        """Return how many pages the rows fill."""
        return max(1, -(-len(self.rows) // PAGE_SIZE))

    @property
    def shown(self) -> list[dict[str, Any]]:
        """Return this page's rows."""
        start = (self.page_no - 1) * PAGE_SIZE
        return self.rows[start : start + PAGE_SIZE]

    def link(self, **changes: Any) -> str:
        """The query string of this view with some parameters changed."""
        values = {
            "period": self.period,
            "q": self.query,
            "sort": self.sort,
            "dir": self.direction,
            "page": str(self.page_no),
            **{k: str(v) for k, v in changes.items()},
        }
        from urllib.parse import urlencode

        return "?" + urlencode({k: v for k, v in values.items() if v not in ("", None)})

    def sort_link(self, column: str) -> str:
        """The link that sorts by ``column`` (flipping the direction if it already does)."""
        if column == self.sort:
            return self.link(dir="asc" if self.direction == "desc" else "desc", page=1)
        return self.link(sort=column, dir="desc" if COLUMNS[column][1] else "asc", page=1)

    def aria_sort(self, column: str) -> str:
        """The column's ``aria-sort`` value."""
        if column != self.sort:
            return "none"
        return "descending" if self.direction == "desc" else "ascending"


def read_view(request: Request) -> tuple[str, str, str, str, int]:
    """The table's parameters from the query string, each checked (bad ones fall back)."""
    params = request.query_params
    period = params.get("period", "30")
    period = period if period in PERIODS else "30"
    query = params.get("q", "").strip()[:MAX_QUERY]
    sort = params.get("sort", "name")
    sort = sort if sort in COLUMNS else "name"
    direction = params.get("dir", "desc" if COLUMNS[sort][1] else "asc")
    direction = direction if direction in ("asc", "desc") else "asc"
    try:
        page_no = max(1, min(int(params.get("page", "1")), 100_000))
    except ValueError:
        page_no = 1
    return period, query, sort, direction, page_no


def student_table(page: Page, class_id: str | None) -> tuple[StudentTable, Any]:
    """Build the students table of a class (or of the whole scope) for this request."""
    period, query, sort, direction, page_no = read_view(page.request)
    with page.connect() as conn:
        klass = None if class_id is None else page.scope.require_class(conn, class_id)
        usernames = page.scope.usernames(class_id)
        names = members(conn, page.scope, class_id)
        days = PERIODS[period]
        first = None
        if days is not None:
            today = school_day(conn, page, None if klass is None else klass["school_id"])
            first = (today - timedelta(days=days - 1)).isoformat()
        d = an_student_days
        totals = sa.select(
            d.c.username,
            sa.func.sum(d.c.reading_ms).label("reading_ms"),
            sa.func.sum(d.c.is_active).label("active_days"),
            sa.func.sum(d.c.pages_read).label("pages"),
            sa.func.sum(d.c.flashcard_reviews).label("reviews"),
            sa.func.sum(d.c.lp_steps).label("steps"),
        ).where(d.c.username.in_(usernames))
        books = sa.select(
            an_page_days.c.username,
            sa.func.count(sa.distinct(an_page_days.c.book_id)).label("books"),
        ).where(an_page_days.c.username.in_(usernames))
        if first is not None:
            totals = totals.where(d.c.day >= first)
            books = books.where(an_page_days.c.day >= first)
        by_user = {r.username: r for r in conn.execute(totals.group_by(d.c.username))}
        book_counts = {
            r.username: int(r.books) for r in conn.execute(books.group_by(an_page_days.c.username))
        }
        last_active = {
            r.username: r.last_active_day
            for r in conn.execute(
                sa.select(an_students.c.username, an_students.c.last_active_day).where(
                    an_students.c.username.in_(usernames)
                )
            )
        }
    rows = []
    needle = query.casefold()
    for username, name in names.items():
        if needle and needle not in name.casefold():
            continue
        t = by_user.get(username)
        rows.append(
            {
                "key": page.scope.student_key(username),
                "name": name,
                "minutes": round(int(t.reading_ms or 0) / 60_000) if t else 0,
                "active_days": int(t.active_days or 0) if t else 0,
                "pages": int(t.pages or 0) if t else 0,
                "books": book_counts.get(username, 0),
                "reviews": int(t.reviews or 0) if t else 0,
                "steps": int(t.steps or 0) if t else 0,
                "last_active": last_active.get(username) or "",
            }
        )

    def sort_key(row: dict[str, Any]) -> tuple[Any, str]:
        value = row[sort]
        return (value.casefold() if isinstance(value, str) else value, row["name"].casefold())

    rows.sort(key=sort_key, reverse=direction == "desc")
    table = StudentTable(period, query, sort, direction, page_no, rows, first)
    table.page_no = min(page_no, table.pages)
    return table, klass


def students_page(request: Request) -> Response:
    """The students table: of one class, or of every class in scope."""
    page = open_page(request)
    class_id = class_id_of(request) if "class_id" in request.path_params else None
    if class_id is None:
        page.scope.require("classes")
    table, klass = student_table(page, class_id)
    base = f"/ui/classes/{class_id}/students" if class_id is not None else "/ui/students"
    template = "fragments/students_table.html" if page.is_fragment else "students.html"
    return page.render(
        template, table=table, klass=klass, base=base, columns=COLUMNS, periods=list(PERIODS)
    )


def _cell(value: Any) -> Any:
    # A name a spreadsheet would run as a formula is quoted (CSV injection).
    if isinstance(value, str) and _FORMULA.match(value):
        return "'" + value
    return value


def students_csv(request: Request) -> Response:
    """The students table as CSV: the same rows (all pages) and columns as the page."""
    page = open_page(request)
    class_id = class_id_of(request) if "class_id" in request.path_params else None
    if class_id is None:
        page.scope.require("classes")
    table, _ = student_table(page, class_id)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([page.gettext(header) for header, _ in COLUMNS.values()])
    for row in table.rows:
        writer.writerow([_cell(row[column]) for column in COLUMNS])
    today = date.fromtimestamp(page.site.clock.now_ms() / 1000).isoformat()  # noqa: DTZ012 - a file name
    name = re.sub(r"[^A-Za-z0-9_-]", "_", class_id or "school")[:60]
    filename = f"students-{name}-{table.period}-{today}.csv"
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


def student_page(request: Request) -> Response:
    """One student: daily minutes (chart and table), books, decks, path steps, sessions."""
    page = open_page(request)
    page.scope.require("classes")
    key = str(request.path_params["key"])[:40]
    period = request.query_params.get("period", "30")
    period = period if period in ("7", "30", "90") else "30"
    days = int(period)
    with page.connect() as conn:
        username = page.scope.resolve_student(conn, key)
        summary = student_summary(conn, username) or {}
        name = page.scope.name(username, summary.get("display_name"))
        today = school_day(conn, page, summary.get("school_id"))
        first = today - timedelta(days=days - 1)
        d = an_student_days
        by_day = {
            r.day: r
            for r in conn.execute(
                sa.select(d.c.day, d.c.reading_ms, d.c.active_ms, d.c.pages_read).where(
                    d.c.username == username, d.c.day >= first.isoformat()
                )
            )
        }
        daily = []
        for n in range(days):
            day = (first + timedelta(days=n)).isoformat()
            r = by_day.get(day)
            daily.append(
                {
                    "day": day,
                    "reading": round(int(r.reading_ms) / 60_000, 1) if r else 0.0,
                    "active": round(int(r.active_ms) / 60_000, 1) if r else 0.0,
                    "pages": int(r.pages_read) if r else 0,
                }
            )
        b = an_student_books
        books = (
            conn.execute(
                sa.select(b, ec_books.c.title)
                .select_from(b.outerjoin(ec_books, ec_books.c.book_id == b.c.book_id))
                .where(b.c.username == username)
                .order_by(b.c.last_view_ms.desc())
                .limit(100)
            )
            .mappings()
            .all()
        )
        decks = (
            conn.execute(
                sa.select(an_flashcard_decks)
                .where(an_flashcard_decks.c.username == username)
                .order_by(an_flashcard_decks.c.deck_id)
            )
            .mappings()
            .all()
        )
        s = an_lp_step_days
        steps = conn.execute(
            sa.select(
                s.c.lp_id,
                s.c.step_id,
                ec_lp_steps.c.title,
                sa.func.sum(s.c.attempts).label("attempts"),
                sa.func.max(s.c.best_score).label("best_score"),
                sa.func.count(s.c.first_passed_ms).label("passed"),
                sa.func.max(s.c.last_ms).label("last_ms"),
            )
            .select_from(
                s.outerjoin(
                    ec_lp_steps,
                    sa.and_(ec_lp_steps.c.lp_id == s.c.lp_id, ec_lp_steps.c.step_id == s.c.step_id),
                )
            )
            .where(s.c.username == username)
            .group_by(s.c.lp_id, s.c.step_id, ec_lp_steps.c.title)
            .order_by(s.c.lp_id, s.c.step_id)
        ).all()
        sessions = (
            conn.execute(
                sa.select(an_sessions)
                .where(an_sessions.c.username == username)
                .order_by(an_sessions.c.start_ms.desc())
                .limit(20)
            )
            .mappings()
            .all()
        )
    return page.render(
        "student.html",
        name=name,
        key=key,
        summary=summary,
        period=period,
        daily=daily,
        books=books,
        decks=decks,
        steps=steps,
        sessions=sessions,
    )


def routes() -> list[BaseRoute]:
    """The students pages' routes."""
    return [
        Route("/students", students_page),
        Route("/students.csv", students_csv),
        Route("/students/{key}", student_page),
        Route("/classes/{class_id}/students", students_page),
        Route("/classes/{class_id}/students.csv", students_csv),
    ]
