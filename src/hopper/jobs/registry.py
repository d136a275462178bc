"""Scheduled jobs: the same code runs in-process or as ``hopper job NAME``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from hopper.clock import Clock
from hopper.config import HopperSettings
from hopper.store import open_event_store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """A named piece of scheduled work."""

    name: str
    description: str
    interval_secs: Callable[[HopperSettings], int]
    run: Callable[[HopperSettings, Clock], str]


def purge_errors(settings: HopperSettings, clock: Clock) -> str:
    """Delete rejected events older than ``retention.error_retention_days``."""
    cutoff = clock.now_ms() - settings.retention.error_retention_days * 86_400_000
    store = open_event_store(settings.store)
    try:
        store.migrate()
        deleted = store.purge_errors(cutoff)
    finally:
        store.close()
    logger.info("Purged %d rejected events older than the retention.", deleted)
    return f"deleted {deleted} rows of reader_events_errors received before {cutoff} (ms)"


def retain_topics(settings: HopperSettings, clock: Clock) -> str:
    """Remove topic records older than ``topics.retention_secs`` (the embedded log)."""
    from hopper.pipeline.topics import TopicNotFoundError, open_topic_log

    names = sorted(
        {
            name.partition(":")[2]
            for topology in settings.pipeline.topologies().values()
            for name in (*topology.sources, *topology.sinks)
            if name.startswith("topic:")
        }
    )
    if not names:
        return "no topology uses a topic"
    cutoff = clock.now_ms() - settings.topics.retention_secs * 1000
    log = open_topic_log(settings.topics)
    removed = 0
    try:
        for name in names:
            try:
                removed += log.retain(name, cutoff)
            except TopicNotFoundError:
                continue  # not created yet: nothing to remove
    finally:
        log.close()
    return f"removed {removed} records older than {cutoff} (ms) from {', '.join(names)}"


JOBS: dict[str, Job] = {
    job.name: job
    for job in (
        Job(
            "purge-errors",
            "Delete rejected events older than retention.error_retention_days.",
            lambda s: s.retention.purge_interval_secs,
            purge_errors,
        ),
        Job(
            "retain-topics",
            "Remove topic records older than topics.retention_secs (brokers do it themselves).",
            lambda s: s.retention.purge_interval_secs,
            retain_topics,
        ),
    )
}
