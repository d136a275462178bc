"""An SQLAlchemy engine on the node's store, for reads and small writes beside the writer.

The writer keeps its own connection (``EventStore``); the analytics API, the job history
and reports share this pooled engine, one dialect-neutral query each.
"""

from __future__ import annotations

import sqlalchemy as sa

from hopper.config import StoreSettings


def engine_for(settings: StoreSettings) -> sa.Engine:
    """Return an SQLAlchemy engine on the node's store (reads and small writes)."""
    if settings.backend == "postgres":
        url = settings.postgres_url.get_secret_value()
        url = url.replace("postgresql://", "postgresql+psycopg://", 1)
        return sa.create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4)
    return sa.create_engine(
        f"sqlite:///{settings.sqlite_path}",
        connect_args={"check_same_thread": False, "timeout": 30},
    )
