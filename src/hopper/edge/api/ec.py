"""``/v1/ec``: whether, and when first and last, students opened resources, in bulk (ec)."""

from __future__ import annotations

from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from hopper.access import Scope
from hopper.edge.api.access import Caller, audience, refuse
from hopper.store.schema import reader_events

router = APIRouter(prefix="/ec", tags=["e-content"])

AUDIENCES = (Scope.EC,)
CallerDep = Annotated[Caller, Depends(audience(*AUDIENCES))]
MAX_PAIRS = 5000


class StudentResources(BaseModel):
    """One student and the resources to ask about."""

    username: str = Field(min_length=1, max_length=200)
    resource_ids: list[str] = Field(min_length=1, max_length=1000)


class OpenedQuery(BaseModel):
    """The students and resources to look up (at most 5000 pairs in all)."""

    items: list[StudentResources] = Field(min_length=1, max_length=1000)


def _resource_id(dialect: str) -> sa.ColumnElement[Any]:
    payload = reader_events.c.payload
    if dialect == "postgresql":
        return payload.op("->>", return_type=sa.Text)(sa.literal_column("'resource_id'"))
    return sa.func.json_extract(payload, "$.resource_id")


@router.post("/opened", summary="Whether students opened resources, first and last time")
def opened(request: Request, caller: CallerDep, query: OpenedQuery) -> dict[str, Any]:
    """For each (student, resource): opened or not, first and last time, how often."""
    if sum(len(item.resource_ids) for item in query.items) > MAX_PAIRS:
        raise HTTPException(status_code=413, detail=f"at most {MAX_PAIRS} pairs a request")
    e = reader_events
    resource = _resource_id(caller.engine.dialect.name).label("resource_id")
    answers = []
    with caller.engine.connect() as conn:
        for item in query.items:
            if not caller.may_read_student(item.username):
                raise refuse(f"student {item.username!r}")
            wanted = sorted(set(item.resource_ids))
            found = {
                row.resource_id: row
                for row in conn.execute(
                    sa.select(
                        resource,
                        sa.func.min(e.c.app_time_ms).label("first_ms"),
                        sa.func.max(e.c.app_time_ms).label("last_ms"),
                        sa.func.count().label("times"),
                    )
                    .where(
                        e.c.username == item.username,
                        e.c.event_type == "resource_opened",
                        resource.in_(wanted),
                    )
                    .group_by(resource)
                )
            }
            for rid in item.resource_ids:
                row = found.get(rid)
                answers.append(
                    {
                        "username": item.username,
                        "resource_id": rid,
                        "opened": row is not None,
                        "first_ms": None if row is None else int(row.first_ms),
                        "last_ms": None if row is None else int(row.last_ms),
                        "times": 0 if row is None else int(row.times),
                    }
                )
    return {"items": answers}
