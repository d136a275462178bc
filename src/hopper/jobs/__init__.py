"""Scheduled work: a registry of jobs and the in-process scheduler."""

from hopper.jobs.registry import JOBS, Job
from hopper.jobs.scheduler import run_scheduler

__all__ = ["JOBS", "Job", "run_scheduler"]
