"""Every part's schema migrations, in one order, and the one loop that applies them.

Parts that keep tables in the node's store define them beside their code, each with its
own migrations, and list them here; versions are one sequence across parts.

    1-4  the event tables, tokens, the dedup index      (hopper.store.schema)
    5  reference data (hopper.store.reference)
    6  analytics (hopper.store.analytics)
    7-8  token subjects, job runs                        (hopper.store.schema)
    9  web pages: users, sessions, seat layouts (hopper.store.users)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

from hopper.store.analytics import ANALYTICS_MIGRATIONS
from hopper.store.reference import REFERENCE_MIGRATIONS
from hopper.store.schema import CORE_MIGRATIONS, VERSION_TABLE, Migration
from hopper.store.users import USER_MIGRATIONS

logger = logging.getLogger(__name__)

MIGRATIONS: tuple[Migration, ...] = tuple(
    sorted(
        (*CORE_MIGRATIONS, *REFERENCE_MIGRATIONS, *ANALYTICS_MIGRATIONS, *USER_MIGRATIONS),
        key=lambda m: m.version,
    )
)
if [m.version for m in MIGRATIONS] != list(range(1, len(MIGRATIONS) + 1)):
    raise RuntimeError("schema migration versions must be 1, 2, 3... with no gap or repeat")


class SchemaConnection(Protocol):
    """What the migration loop needs of a store's connection."""

    dialect: str  # "sqlite" or "postgres"

    def exclusive(self) -> AbstractContextManager[Callable[[str, Sequence[Any]], list[Any]]]:
        """Open a transaction that no other migrator runs beside; yield its ``execute``."""
        ...


def apply_migrations(conn: SchemaConnection) -> int:
    """Apply every migration not applied yet, each in its own transaction; return how many."""
    ran = 0
    for migration in MIGRATIONS:
        with conn.exclusive() as execute:
            execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER NOT NULL)", ())
            # Read under the lock: another process may have just applied it.
            row = execute(f"SELECT max(version) FROM {VERSION_TABLE}", ())  # noqa: S608
            if (row[0][0] or 0) >= migration.version:
                continue
            for statement in migration.statements(conn.dialect):
                execute(statement, ())
            execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (?)", (migration.version,))  # noqa: S608
        logger.info("Applied migration %d: %s.", migration.version, migration.description)
        ran += 1
    return ran
