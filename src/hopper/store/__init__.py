"""Durable event tables and the dedup index, behind the EventStore interface."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from hopper.sinks.base import PendingWrite
from hopper.store.base import TABLES, EventStore, StoredError

if TYPE_CHECKING:
    from hopper.config import StoreSettings

# Lazy import paths, so an engine's library loads only when it is chosen.
EVENT_STORES = {
    "sqlite": "hopper.store.sqlite:SqliteEventStore",
    "postgres": "hopper.store.postgres:PostgresEventStore",
}


def open_event_store(settings: StoreSettings) -> EventStore:
    """Open (without migrating) the event store the settings choose."""
    module_name, _, class_name = EVENT_STORES[settings.backend].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    store: EventStore = cls.from_settings(settings)
    return store


__all__ = [
    "EVENT_STORES",
    "TABLES",
    "EventStore",
    "PendingWrite",
    "StoredError",
    "open_event_store",
]
