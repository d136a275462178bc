"""In-process scheduler: runs every registered job at its interval, off the event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import sqlalchemy as sa

from hopper.clock import Clock
from hopper.config import HopperSettings
from hopper.errors import HopperError
from hopper.jobs.history import JobRun, engine_for, record_run
from hopper.jobs.registry import JOBS, Job
from hopper.observe.logs import redact

logger = logging.getLogger(__name__)


async def run_scheduler(
    settings: HopperSettings, clock: Clock, jobs: Mapping[str, Job] = JOBS
) -> None:
    """Run each job once at start-up and then at its interval, until cancelled."""
    engine = engine_for(settings.store)
    try:
        await asyncio.gather(*(_every(job, settings, clock, engine) for job in jobs.values()))
    finally:
        engine.dispose()


def run_and_record(job: Job, settings: HopperSettings, clock: Clock, engine: sa.Engine) -> str:
    """Run a job once and record the run (its summary, or its error) in the job history."""
    started = clock.now_ms()
    try:
        summary = job.run(settings, clock)
    except Exception as exc:
        _record(engine, JobRun(job.name, started, clock.now_ms(), "failed", redact(str(exc))))
        raise
    _record(engine, JobRun(job.name, started, clock.now_ms(), "ok", summary))
    return summary


def _record(engine: sa.Engine, run: JobRun) -> None:
    try:
        record_run(engine, run)
    except HopperError as exc:  # the history is for reports: never fail the job over it
        logger.warning("Job %s ran but its run was not recorded: %s.", run.job, exc)


async def _every(job: Job, settings: HopperSettings, clock: Clock, engine: sa.Engine) -> None:
    while True:
        try:
            summary = await asyncio.to_thread(run_and_record, job, settings, clock, engine)
            logger.info("Job %s: %s.", job.name, summary)
        except Exception:  # a failing job must not stop the scheduler
            logger.exception("Job %s failed; it runs again at its next interval.", job.name)
        await asyncio.sleep(job.interval_secs(settings))
