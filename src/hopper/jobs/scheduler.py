"""In-process scheduler: runs every registered job at its interval, off the event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from hopper.clock import Clock
from hopper.config import HopperSettings
from hopper.jobs.registry import JOBS, Job

logger = logging.getLogger(__name__)


async def run_scheduler(
    settings: HopperSettings, clock: Clock, jobs: Mapping[str, Job] = JOBS
) -> None:
    """Run each job once at start-up and then at its interval, until cancelled."""
    await asyncio.gather(*(_every(job, settings, clock) for job in jobs.values()))


async def _every(job: Job, settings: HopperSettings, clock: Clock) -> None:
    while True:
        try:
            summary = await asyncio.to_thread(job.run, settings, clock)
            logger.info("Job %s: %s.", job.name, summary)
        except Exception:  # a failing job must not stop the scheduler
            logger.exception("Job %s failed; it runs again at its next interval.", job.name)
        await asyncio.sleep(job.interval_secs(settings))
