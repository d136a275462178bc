"""Teacher pages: my classes, a class's home, its books, flashcards and learning paths.

Every figure is read from the derived tables (``an_*``) over the class's members, with the
school's days as processing counts them (docs/analytics.md); "this week" is the last 7
days up to today in the school's time zone.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from hopper.edge.api.portal import school_today
from hopper.edge.pages.i18n import N_
from hopper.edge.pages.scope import ViewScope
from hopper.edge.pages.site import Page, open_page, redirect
from hopper.store.analytics import (
    an_flashcard_cards,
    an_flashcard_decks,
    an_learning_paths,
    an_lp_step_days,
    an_needs_help,
    an_page_days,
    an_student_books,
    an_student_days,
)
from hopper.store.reference import (
    ec_books,
    ec_learning_paths,
    ec_lp_steps,
    ec_schools,
    ec_students,
)
from hopper.store.schema import reader_events

ACTIVE_NOW_MS = 5 * 60_000
FEED_SIZE = 25
FEED_KINDS: dict[str, tuple[str, ...]] = {
    "all": (),
    "reading": ("book_opened", "book_closed", "page_viewed"),
    "flashcards": ("flashcard_reviewed",),
    "paths": ("lp_step_completed",),
    "sessions": ("app_session_started", "app_session_ended"),
}
MAX_ID = 200


def class_id_of(request: Request) -> str:
    """Return the path's class id (bounded)."""
    class_id = str(request.path_params["class_id"])
    if not 0 < len(class_id) <= MAX_ID:
        from starlette.exceptions import HTTPException

        raise HTTPException(status_code=404, detail=N_("No such class."))
    return class_id


def school_zone(conn: sa.Connection, school_id: str | None) -> str:
    """A school's time zone (UTC when unknown; the first school's when none is named)."""
    query = sa.select(ec_schools.c.time_zone).order_by(ec_schools.c.school_id).limit(1)
    if school_id is not None:
        query = query.where(ec_schools.c.school_id == school_id)
    return str(conn.execute(query).scalar() or "UTC")


def school_day(conn: sa.Connection, page: Page, school_id: str | None) -> date:
    """Today in a school's time zone."""
    return school_today(page.site.clock.now_ms(), school_zone(conn, school_id))


def members(conn: sa.Connection, scope: ViewScope, class_id: str | None) -> dict[str, str]:
    """Usernames in scope (of a class) and how the pages name them."""
    usernames = scope.usernames(class_id).subquery()
    rows = conn.execute(
        sa.select(usernames.c.username, ec_students.c.display_name).select_from(
            usernames.outerjoin(ec_students, ec_students.c.username == usernames.c.username)
        )
    ).all()
    return {str(r.username): scope.name(str(r.username), r.display_name) for r in rows}


def week_figures(conn: sa.Connection, usernames: sa.Select[Any], first: str) -> dict[str, int]:
    """This week's figures of a set of students."""
    d = an_student_days
    row = conn.execute(
        sa.select(
            sa.func.count(sa.distinct(sa.case((d.c.is_active == 1, d.c.username)))),
            sa.func.coalesce(sa.func.sum(d.c.reading_ms), 0),
            sa.func.coalesce(sa.func.sum(d.c.pages_read), 0),
            sa.func.coalesce(sa.func.sum(d.c.flashcard_reviews), 0),
            sa.func.coalesce(sa.func.sum(d.c.lp_steps), 0),
        ).where(d.c.username.in_(usernames), d.c.day >= first)
    ).one()
    books = conn.execute(
        sa.select(sa.func.count(sa.distinct(an_page_days.c.book_id))).where(
            an_page_days.c.username.in_(usernames), an_page_days.c.day >= first
        )
    ).scalar()
    return {
        "active": int(row[0] or 0),
        "reading_minutes": round(int(row[1]) / 60_000),
        "pages_read": int(row[2]),
        "books": int(books or 0),
        "flashcard_reviews": int(row[3]),
        "lp_steps": int(row[4]),
    }


def active_now(conn: sa.Connection, usernames: sa.Select[Any], now_ms: int) -> int:
    """Students with an event in the last few minutes (by the tablets' clocks)."""
    e = reader_events
    return int(
        conn.execute(
            sa.select(sa.func.count(sa.distinct(e.c.username))).where(
                e.c.username.in_(usernames), e.c.app_time_ms >= now_ms - ACTIVE_NOW_MS
            )
        ).scalar()
        or 0
    )


def home(request: Request) -> Response:
    """Send each role to its first page."""
    page = open_page(request)
    for capability, url in (
        ("classes", "/ui/classes"),
        ("devices", "/ui/devices"),
        ("server", "/ui/server"),
    ):
        if page.scope.may(capability):
            return redirect(url)
    return redirect("/ui/about")


def my_classes(request: Request) -> Response:
    """The classes in scope: students, active now, this week's minutes."""
    page = open_page(request)
    page.scope.require("classes")
    now = page.site.clock.now_ms()
    rows = []
    with page.connect() as conn:
        for klass in conn.execute(page.scope.classes()).mappings():
            usernames = page.scope.usernames(klass["class_id"])
            today = school_day(conn, page, klass["school_id"])
            first = (today - timedelta(days=6)).isoformat()
            students = conn.execute(
                sa.select(sa.func.count()).select_from(usernames.subquery())
            ).scalar()
            rows.append(
                {
                    **klass,
                    "students": int(students or 0),
                    "active_now": active_now(conn, usernames, now),
                    **week_figures(conn, usernames, first),
                }
            )
    return page.render("classes.html", classes=rows)


def class_home(request: Request) -> Response:
    """A class's week tiles, who needs attention, and the latest activity."""
    page = open_page(request)
    class_id = class_id_of(request)
    kind = request.query_params.get("feed", "all")
    if kind not in FEED_KINDS:
        kind = "all"
    with page.connect() as conn:
        klass = page.scope.require_class(conn, class_id)
        usernames = page.scope.usernames(class_id)
        names = members(conn, page.scope, class_id)
        tz = school_zone(conn, klass["school_id"])
        today = school_today(page.site.clock.now_ms(), tz)
        first = (today - timedelta(days=6)).isoformat()
        week = week_figures(conn, usernames, first)
        week["students"] = len(names)
        help_rows = conn.execute(
            sa.select(an_needs_help)
            .where(an_needs_help.c.username.in_(usernames))
            .order_by(an_needs_help.c.rule, an_needs_help.c.username, an_needs_help.c.subject)
        ).mappings()
        attention = [
            {
                **r,
                "name": names.get(r["username"], r["username"]),
                "key": page.scope.student_key(r["username"]),
            }
            for r in help_rows
        ]
        e = reader_events
        feed_q = (
            sa.select(e.c.app_time_ms, e.c.username, e.c.event_type, e.c.book_id, e.c.page)
            .where(e.c.username.in_(usernames), e.c.event_type != "cam_status")
            .order_by(e.c.app_time_ms.desc(), e.c.id.desc())
            .limit(FEED_SIZE)
        )
        if FEED_KINDS[kind]:
            feed_q = feed_q.where(e.c.event_type.in_(FEED_KINDS[kind]))
        feed = [
            {
                "time_ms": int(r.app_time_ms),
                "name": names.get(r.username, r.username),
                "key": page.scope.student_key(r.username),
                "type": r.event_type,
                "book_id": r.book_id,
                "page": r.page,
            }
            for r in conn.execute(feed_q)
        ]
    template = "fragments/feed.html" if page.is_fragment else "class_home.html"
    return page.render(
        template,
        klass=klass,
        week=week,
        first_day=first,
        today=today.isoformat(),
        attention=attention,
        feed=feed,
        feed_kind=kind,
        tz=tz,
        feed_kinds=list(FEED_KINDS),
    )


def books(request: Request) -> Response:
    """A class's books: readers, minutes, completion; drop-off by page of one book."""
    page = open_page(request)
    class_id = class_id_of(request)
    chosen = request.query_params.get("book", "")[:MAX_ID]
    with page.connect() as conn:
        klass = page.scope.require_class(conn, class_id)
        usernames = page.scope.usernames(class_id)
        b = an_student_books
        rows = conn.execute(
            sa.select(
                b.c.book_id,
                ec_books.c.title,
                sa.func.max(b.c.page_count).label("page_count"),
                sa.func.count().label("readers"),
                sa.func.sum(b.c.reading_ms).label("reading_ms"),
                sa.func.coalesce(sa.func.sum(b.c.is_completed), 0).label("completed"),
                sa.func.avg(b.c.completion).label("completion"),
            )
            .select_from(b.outerjoin(ec_books, ec_books.c.book_id == b.c.book_id))
            .where(b.c.username.in_(usernames))
            .group_by(b.c.book_id, ec_books.c.title)
            .order_by(sa.desc("readers"), b.c.book_id)
        ).all()
        table = [
            {
                "book_id": r.book_id,
                "title": r.title or r.book_id,
                "page_count": r.page_count,
                "readers": int(r.readers),
                "minutes": round(int(r.reading_ms or 0) / 60_000),
                "completed": int(r.completed),
                "completion": None if r.completion is None else float(r.completion),
            }
            for r in rows
        ]
        if not chosen and table:
            chosen = table[0]["book_id"]
        p = an_page_days
        dropoff = [
            {"page": int(r.page), "readers": int(r.readers)}
            for r in conn.execute(
                sa.select(p.c.page, sa.func.count(sa.distinct(p.c.username)).label("readers"))
                .where(p.c.username.in_(usernames), p.c.book_id == chosen)
                .group_by(p.c.page)
                .order_by(p.c.page)
                .limit(2000)
            )
        ]
    most = max((d["readers"] for d in dropoff), default=0)
    chosen_title = next((t["title"] for t in table if t["book_id"] == chosen), chosen)
    return page.render(
        "books.html",
        klass=klass,
        books=table,
        chosen=chosen,
        chosen_title=chosen_title,
        dropoff=dropoff,
        most=most,
    )


def flashcards(request: Request) -> Response:
    """A class's decks: students, reviews, first-try share, retention, due; hardest cards."""
    page = open_page(request)
    class_id = class_id_of(request)
    with page.connect() as conn:
        klass = page.scope.require_class(conn, class_id)
        usernames = page.scope.usernames(class_id)
        d = an_flashcard_decks
        decks = [
            {
                "deck_id": r.deck_id,
                "students": int(r.students),
                "reviews": int(r.reviews),
                "first_try": None if not r.studied else int(r.first_try) / int(r.studied),
                "retention": None if not r.ret_reviews else int(r.ret_passes) / int(r.ret_reviews),
                "mastered": int(r.mastered),
                "due_today": int(r.due_today),
            }
            for r in conn.execute(
                sa.select(
                    d.c.deck_id,
                    sa.func.count().label("students"),
                    sa.func.sum(d.c.reviews).label("reviews"),
                    sa.func.sum(d.c.first_try_correct).label("first_try"),
                    sa.func.sum(d.c.cards_studied).label("studied"),
                    sa.func.sum(d.c.retention_passes).label("ret_passes"),
                    sa.func.sum(d.c.retention_reviews).label("ret_reviews"),
                    sa.func.sum(d.c.mastered_cards).label("mastered"),
                    sa.func.sum(d.c.due_today).label("due_today"),
                )
                .where(d.c.username.in_(usernames))
                .group_by(d.c.deck_id)
                .order_by(d.c.deck_id)
            )
        ]
        c = an_flashcard_cards
        hardest = [
            {
                "deck_id": r.deck_id,
                "card_id": r.card_id,
                "lapses": int(r.lapses),
                "reviews": int(r.reviews),
                "students": int(r.students),
            }
            for r in conn.execute(
                sa.select(
                    c.c.deck_id,
                    c.c.card_id,
                    sa.func.sum(c.c.lapses).label("lapses"),
                    sa.func.sum(c.c.reviews).label("reviews"),
                    sa.func.count().label("students"),
                )
                .where(c.c.username.in_(usernames))
                .group_by(c.c.deck_id, c.c.card_id)
                .having(sa.func.sum(c.c.lapses) > 0)
                .order_by(sa.desc("lapses"), c.c.deck_id, c.c.card_id)
                .limit(10)
            )
        ]
    return page.render("flashcards.html", klass=klass, decks=decks, hardest=hardest)


def paths(request: Request) -> Response:
    """A class's learning paths: a students x steps matrix and a bar per step."""
    page = open_page(request)
    class_id = class_id_of(request)
    chosen = request.query_params.get("path", "")[:MAX_ID]
    with page.connect() as conn:
        klass = page.scope.require_class(conn, class_id)
        usernames = page.scope.usernames(class_id)
        names = members(conn, page.scope, class_id)
        lp = an_learning_paths
        path_rows = conn.execute(
            sa.select(
                lp.c.lp_id,
                ec_learning_paths.c.title,
                sa.func.count().label("students"),
                sa.func.avg(lp.c.progress).label("progress"),
            )
            .select_from(lp.outerjoin(ec_learning_paths, ec_learning_paths.c.lp_id == lp.c.lp_id))
            .where(lp.c.username.in_(usernames))
            .group_by(lp.c.lp_id, ec_learning_paths.c.title)
            .order_by(lp.c.lp_id)
        ).all()
        path_list = [
            {
                "lp_id": r.lp_id,
                "title": r.title or r.lp_id,
                "students": int(r.students),
                "progress": None if r.progress is None else float(r.progress),
            }
            for r in path_rows
        ]
        if not chosen and path_list:
            chosen = path_list[0]["lp_id"]
        steps = [
            {"step_id": r.step_id, "title": r.title or r.step_id}
            for r in conn.execute(
                sa.select(ec_lp_steps.c.step_id, ec_lp_steps.c.title)
                .where(ec_lp_steps.c.lp_id == chosen)
                .order_by(ec_lp_steps.c.position, ec_lp_steps.c.step_id)
            )
        ]
        s = an_lp_step_days
        cells: dict[tuple[str, str], str] = {}
        for r in conn.execute(
            sa.select(
                s.c.username,
                s.c.step_id,
                sa.func.count(s.c.first_passed_ms).label("passed"),
                sa.func.sum(s.c.attempts).label("attempts"),
            )
            .where(s.c.username.in_(usernames), s.c.lp_id == chosen)
            .group_by(s.c.username, s.c.step_id)
        ):
            cells[(r.username, r.step_id)] = "passed" if int(r.passed) else "tried"
            if all(step["step_id"] != r.step_id for step in steps):
                steps.append({"step_id": r.step_id, "title": r.step_id})
    students = sorted(names.items(), key=lambda item: item[1].lower())
    matrix = [
        {
            "name": name,
            "key": page.scope.student_key(username),
            "cells": [cells.get((username, step["step_id"]), "none") for step in steps],
        }
        for username, name in students
    ]
    summary = [
        {
            **step,
            "passed": sum(1 for row in matrix if row["cells"][n] == "passed"),
            "tried": sum(1 for row in matrix if row["cells"][n] == "tried"),
        }
        for n, step in enumerate(steps)
    ]
    return page.render(
        "paths.html",
        klass=klass,
        paths=path_list,
        chosen=chosen,
        steps=steps,
        matrix=matrix,
        summary=summary,
        students=len(matrix),
    )


def routes() -> list[BaseRoute]:
    """The teacher pages' routes (students and the live classroom are elsewhere)."""
    return [
        Route("/", home),
        Route("/classes", my_classes),
        Route("/classes/{class_id}", class_home),
        Route("/classes/{class_id}/books", books),
        Route("/classes/{class_id}/flashcards", flashcards),
        Route("/classes/{class_id}/paths", paths),
    ]
