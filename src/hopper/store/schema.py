"""Schema migrations: an ordered list of DDL steps per dialect, applied once each.

The schema is three tables and changes rarely, so a version table and plain DDL keep
migrations visible and dialect-exact without an ORM (one transaction per step).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    """One schema step, written for each dialect."""

    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "reader_events, raw_events (time-prefixed dedup key), reader_events_errors",
        sqlite=(
            """CREATE TABLE reader_events (
                id INTEGER PRIMARY KEY,
                app_time_ms INTEGER NOT NULL,
                received_ms INTEGER NOT NULL,
                username TEXT NOT NULL,
                device_id TEXT NOT NULL,
                school_id TEXT NOT NULL,
                app_version TEXT NOT NULL,
                platform TEXT NOT NULL,
                session_id TEXT NOT NULL,
                event_type TEXT NOT NULL,
                book_id TEXT,
                page INTEGER,
                payload TEXT NOT NULL,
                hash BLOB NOT NULL
            )""",
            """CREATE TABLE raw_events (
                app_time_ms INTEGER NOT NULL,
                hash BLOB NOT NULL,
                received_ms INTEGER NOT NULL,
                raw BLOB NOT NULL,
                PRIMARY KEY (app_time_ms, hash)
            ) WITHOUT ROWID""",
            """CREATE TABLE reader_events_errors (
                id INTEGER PRIMARY KEY,
                received_ms INTEGER NOT NULL,
                source TEXT NOT NULL,
                reason TEXT NOT NULL,
                detail TEXT NOT NULL,
                raw BLOB NOT NULL
            )""",
            "CREATE INDEX reader_events_errors_received ON reader_events_errors (received_ms)",
        ),
        postgres=(
            """CREATE TABLE reader_events (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                app_time_ms BIGINT NOT NULL,
                received_ms BIGINT NOT NULL,
                username TEXT NOT NULL,
                device_id TEXT NOT NULL,
                school_id TEXT NOT NULL,
                app_version TEXT NOT NULL,
                platform TEXT NOT NULL,
                session_id TEXT NOT NULL,
                event_type TEXT NOT NULL,
                book_id TEXT,
                page INTEGER,
                payload JSONB NOT NULL,
                hash BYTEA NOT NULL
            )""",
            """CREATE TABLE raw_events (
                app_time_ms BIGINT NOT NULL,
                hash BYTEA NOT NULL,
                received_ms BIGINT NOT NULL,
                raw BYTEA NOT NULL,
                PRIMARY KEY (app_time_ms, hash)
            )""",
            """CREATE TABLE reader_events_errors (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                received_ms BIGINT NOT NULL,
                source TEXT NOT NULL,
                reason TEXT NOT NULL,
                detail TEXT NOT NULL,
                raw BYTEA NOT NULL
            )""",
            "CREATE INDEX reader_events_errors_received ON reader_events_errors (received_ms)",
        ),
    ),
    Migration(
        2,
        "reader_events_errors keeps the full size and hash of bytes it keeps only a prefix of",
        sqlite=(
            "ALTER TABLE reader_events_errors ADD COLUMN raw_size INTEGER",
            "ALTER TABLE reader_events_errors ADD COLUMN raw_hash BLOB",
        ),
        postgres=(
            "ALTER TABLE reader_events_errors ADD COLUMN raw_size BIGINT",
            "ALTER TABLE reader_events_errors ADD COLUMN raw_hash BYTEA",
        ),
    ),
    Migration(
        3,
        "hopper_tokens: access tokens, stored as hashes",
        sqlite=(
            """CREATE TABLE hopper_tokens (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                secret_hash BLOB NOT NULL,
                scopes TEXT NOT NULL,
                schools TEXT,
                created_ms INTEGER NOT NULL,
                revoked_ms INTEGER
            )""",
        ),
        postgres=(
            """CREATE TABLE hopper_tokens (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                secret_hash BYTEA NOT NULL,
                scopes TEXT NOT NULL,
                schools TEXT,
                created_ms BIGINT NOT NULL,
                revoked_ms BIGINT
            )""",
        ),
    ),
)

VERSION_TABLE = "hopper_schema_version"
