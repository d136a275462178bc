"""Who may read what in the analytics API: a token's scope, school and subject.

Every endpoint names its audiences' scopes. On top of the scope, a token bound to a student
(``subject = student:<username>``) reads only that student; a teacher's token
(``teacher:<teacher_id>``) only the students and classes of the classes they teach
(``ec_class_teachers``); a token bound to schools only those schools. Refusals are 403 and
say why without telling whether the student exists.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import sqlalchemy as sa
from fastapi import HTTPException, Request

from hopper.access import AuthError, Principal, Scope
from hopper.access.authenticator import bearer_from_header
from hopper.store.reference import (
    ec_class_members,
    ec_class_teachers,
    ec_classes,
    ec_students,
)


@dataclass(frozen=True)
class Caller:
    """A verified caller of the API, and the store to check their reach against."""

    principal: Principal
    engine: sa.Engine

    def may_read_student(self, username: str) -> bool:
        """Tell whether this caller may read ``username``'s data."""
        p = self.principal
        if p.student is not None:
            return p.student == username
        if p.teacher is not None:
            query = (
                sa.select(sa.literal(1))
                .select_from(
                    ec_students.join(
                        ec_class_members, ec_class_members.c.student_id == ec_students.c.student_id
                    ).join(
                        ec_class_teachers,
                        ec_class_teachers.c.class_id == ec_class_members.c.class_id,
                    )
                )
                .where(
                    ec_students.c.username == username, ec_class_teachers.c.teacher_id == p.teacher
                )
                .limit(1)
            )
            with self.engine.connect() as conn:
                if conn.execute(query).first() is None:
                    return False
        if p.schools is not None:
            of_school = sa.select(ec_students.c.school_id).where(ec_students.c.username == username)
            with self.engine.connect() as conn:
                school = conn.execute(of_school).scalar()
            return school is None or school in p.schools
        return True

    def may_read_class(self, class_id: str) -> bool:
        """Tell whether this caller may read class ``class_id``."""
        p = self.principal
        if p.student is not None:
            return False
        with self.engine.connect() as conn:
            school = conn.execute(
                sa.select(ec_classes.c.school_id).where(ec_classes.c.class_id == class_id)
            ).scalar()
            if p.teacher is not None:
                teaches = conn.execute(
                    sa.select(sa.literal(1)).where(
                        ec_class_teachers.c.class_id == class_id,
                        ec_class_teachers.c.teacher_id == p.teacher,
                    )
                ).first()
                if teaches is None:
                    return False
        return p.schools is None or school is None or school in p.schools

    def may_read_school(self, school_id: str) -> bool:
        """Tell whether this caller may read a whole school (not bound to a person)."""
        p = self.principal
        if p.student is not None or p.teacher is not None:
            return False
        return p.schools is None or school_id in p.schools


def refuse(what: str) -> HTTPException:
    """A 403 that does not say whether the thing exists."""
    return HTTPException(status_code=403, detail=f"this token may not read {what}")


def audience(*scopes: Scope) -> Callable[[Request], Awaitable[Caller]]:
    """A FastAPI dependency: the caller, authenticated for any of ``scopes``.

    Only the token check runs in the event loop (its table is cached); every query, the
    reach checks included, runs in the handlers, which FastAPI runs in its thread pool.
    """

    async def dependency(request: Request) -> Caller:
        return await caller_with(request, scopes)

    return dependency


async def caller_with(request: Request, scopes: tuple[Scope, ...]) -> Caller:
    """Authenticate the request's bearer token for any of ``scopes``; raise 401/403."""
    api = request.app.state.api
    token = bearer_from_header(request.headers.get("authorization"))
    try:
        principal = await api.authenticator.authenticate_any(token, scopes)
    except AuthError as exc:
        raise _http(exc) from exc
    return Caller(principal, api.engine)


def _http(exc: AuthError) -> HTTPException:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return HTTPException(status_code=exc.status, detail=str(exc), headers=headers)
