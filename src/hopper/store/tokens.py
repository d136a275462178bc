"""TokenStore: access tokens in the node's own database, stored as hashes only.

The table (``hopper_tokens``) is created by the store's migrations. One SQL text serves
SQLite and PostgreSQL; only the parameter marker differs. A store has its own connection
(never the writer's) and may be used from any thread, one call at a time.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hopper.config import StoreSettings
from hopper.errors import BackendUnavailable


@dataclass(frozen=True, slots=True)
class StoredToken:
    """A row of ``hopper_tokens``: everything about a token but its secret."""

    id: str
    name: str
    secret_hash: bytes
    scopes: tuple[str, ...]
    schools: tuple[str, ...] | None  # None: any school
    created_ms: int
    revoked_ms: int | None = None
    subject: str | None = None  # "student:<username>" or "teacher:<teacher_id>"

    @property
    def is_revoked(self) -> bool:
        """Tell whether the token was revoked."""
        return self.revoked_ms is not None


_COLUMNS = "id, name, secret_hash, scopes, schools, created_ms, revoked_ms, subject"


class TokenStore:
    """Tokens on SQLite or PostgreSQL, through one DB-API connection."""

    def __init__(self, connection: Any, *, marker: str, errors: tuple[type[Exception], ...]):
        self._conn = connection
        self._marker = marker
        self._errors = errors
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> TokenStore:
        """Open the token table of the store the settings name."""
        if settings.backend == "postgres":
            try:
                import psycopg
            except ImportError as exc:  # pragma: no cover - depends on the install
                from hopper.errors import BackendMissing

                raise BackendMissing("postgres", extra="postgres", library="psycopg") from exc
            conn: Any
            try:
                conn = psycopg.connect(
                    settings.postgres_url.get_secret_value(),
                    autocommit=True,
                    connect_timeout=5,
                    application_name="hopper-tokens",
                )
            except psycopg.Error as exc:
                raise BackendUnavailable(f"Cannot connect to PostgreSQL: {exc}") from exc
            return cls(conn, marker="%s", errors=(psycopg.Error,))
        try:
            settings.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                settings.sqlite_path, isolation_level=None, check_same_thread=False, timeout=30
            )
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"Cannot open SQLite store: {exc}") from exc
        return cls(conn, marker="?", errors=(sqlite3.Error,))

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        sql = sql.replace("?", self._marker)
        with self._lock:
            try:
                cursor = self._conn.execute(sql, params)
                rows = cursor.fetchall() if cursor.description is not None else []
            except self._errors as exc:
                raise BackendUnavailable(f"Token store unavailable: {exc}") from exc
        return [tuple(row) for row in rows]

    def add(self, token: StoredToken) -> None:
        """Insert a new token."""
        self._run(
            f"INSERT INTO hopper_tokens ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
            (
                token.id,
                token.name,
                token.secret_hash,
                " ".join(token.scopes),
                None if token.schools is None else " ".join(token.schools),
                token.created_ms,
                token.revoked_ms,
                token.subject,
            ),
        )

    def all(self) -> list[StoredToken]:
        """Return every token, oldest first (revoked ones included)."""
        rows = self._run(f"SELECT {_COLUMNS} FROM hopper_tokens ORDER BY created_ms, id")  # noqa: S608
        return [_token(row) for row in rows]

    def revoke(self, token_id: str, now_ms: int) -> bool:
        """Mark a token revoked; False when no such token is active."""
        found = self._run(
            "SELECT id FROM hopper_tokens WHERE id = ? AND revoked_ms IS NULL", (token_id,)
        )
        if not found:
            return False
        self._run("UPDATE hopper_tokens SET revoked_ms = ? WHERE id = ?", (now_ms, token_id))
        return True

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()


def _token(row: tuple[Any, ...]) -> StoredToken:
    token_id, name, secret_hash, scopes, schools, created_ms, revoked_ms, subject = row
    return StoredToken(
        token_id,
        name,
        bytes(secret_hash),
        tuple(scopes.split()),
        None if schools is None else tuple(schools.split()),
        int(created_ms),
        None if revoked_ms is None else int(revoked_ms),
        subject,
    )
