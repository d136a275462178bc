"""Job history: every run of a scheduled job recorded in the node's store, kept bounded.

Both the in-process scheduler and ``hopper job NAME`` record runs here, so devops and
``/health`` can tell when each job last ran and how it went.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlalchemy as sa

from hopper.errors import BackendUnavailable
from hopper.store.engine import engine_for
from hopper.store.schema import hopper_job_runs

__all__ = ["JobRun", "engine_for", "last_runs", "record_run"]

logger = logging.getLogger(__name__)

KEEP_RUNS = 100  # per job
MAX_SUMMARY = 2000


@dataclass(frozen=True, slots=True)
class JobRun:
    """One run of a job."""

    job: str
    started_ms: int
    finished_ms: int
    status: str  # "ok" or "failed"
    summary: str


def record_run(engine: sa.Engine, run: JobRun) -> None:
    """Store a run and forget the oldest beyond ``KEEP_RUNS`` of that job."""
    table = hopper_job_runs
    try:
        with engine.begin() as conn:
            conn.execute(
                table.insert().values(
                    job=run.job,
                    started_ms=run.started_ms,
                    finished_ms=run.finished_ms,
                    status=run.status,
                    summary=run.summary[:MAX_SUMMARY],
                )
            )
            keep = (
                sa.select(table.c.id)
                .where(table.c.job == run.job)
                .order_by(table.c.id.desc())
                .limit(KEEP_RUNS)
                .subquery()
            )
            conn.execute(
                table.delete().where(table.c.job == run.job, table.c.id.not_in(sa.select(keep)))
            )
    except sa.exc.SQLAlchemyError as exc:
        raise BackendUnavailable(f"Could not record the run of job {run.job}: {exc}") from exc


def last_runs(engine: sa.Engine) -> dict[str, JobRun]:
    """Return each job's latest run."""
    table = hopper_job_runs
    latest = sa.select(sa.func.max(table.c.id)).group_by(table.c.job)
    query = sa.select(
        table.c.job, table.c.started_ms, table.c.finished_ms, table.c.status, table.c.summary
    ).where(table.c.id.in_(latest))
    with engine.connect() as conn:
        return {row.job: JobRun(*row) for row in conn.execute(query)}
