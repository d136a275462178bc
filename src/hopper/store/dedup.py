"""DedupIndex backends: a table in the node's store (SQLite or PostgreSQL), or memory."""

from __future__ import annotations

import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from hopper.config import StoreSettings
from hopper.errors import BackendMissing, BackendUnavailable


class MemoryDedupIndex:
    """Keys in this process's memory, at most ``max_keys`` of them (the oldest go first)."""

    def __init__(self, *, max_keys: int = 1_000_000) -> None:
        self._keys: OrderedDict[tuple[str, bytes], int] = OrderedDict()
        self._max = max_keys
        self._lock = threading.Lock()
        self.evicted = 0  # keys forgotten early because of max_keys

    def claim(self, namespace: str, keys: Sequence[bytes], now_ms: int) -> list[bool]:
        """Record the keys; True for each not seen before."""
        out = []
        with self._lock:
            for key in keys:
                ident = (namespace, key)
                is_new = ident not in self._keys
                if is_new:
                    self._keys[ident] = now_ms
                    if len(self._keys) > self._max:
                        self._keys.popitem(last=False)
                        self.evicted += 1
                out.append(is_new)
        return out

    def purge(self, older_than_ms: int) -> int:
        """Forget keys claimed before the cut-off (they are in claim order)."""
        dropped = 0
        with self._lock:
            while self._keys:
                ident, claimed = next(iter(self._keys.items()))
                if claimed >= older_than_ms:
                    break
                del self._keys[ident]
                dropped += 1
        return dropped

    def close(self) -> None:
        """Nothing to release."""


class SqlDedupIndex:
    """Keys in the ``dedup_keys`` table of the node's store (migrated by the store)."""

    def __init__(self, settings: StoreSettings) -> None:
        self._lock = threading.Lock()
        self._pg = settings.backend == "postgres"
        self._conn: Any
        if self._pg:
            try:
                import psycopg
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise BackendMissing("postgres", extra="postgres", library="psycopg") from exc
            self._errors: tuple[type[Exception], ...] = (psycopg.Error,)
            try:
                self._conn = psycopg.connect(
                    settings.postgres_url.get_secret_value(), autocommit=True, connect_timeout=5
                )
            except psycopg.Error as exc:
                raise BackendUnavailable(f"Cannot connect to PostgreSQL: {exc}") from exc
        else:
            self._errors = (sqlite3.Error,)
            try:
                self._conn = sqlite3.connect(
                    settings.sqlite_path, isolation_level=None, check_same_thread=False, timeout=30
                )
            except sqlite3.Error as exc:
                raise BackendUnavailable(f"Cannot open SQLite store: {exc}") from exc

    def claim(self, namespace: str, keys: Sequence[bytes], now_ms: int) -> list[bool]:
        """Record the keys in one transaction; True for each that was not there."""
        if not keys:
            return []
        with self._lock:
            try:
                new = (
                    self._claim_pg(namespace, keys, now_ms)
                    if self._pg
                    else self._claim_sqlite(namespace, keys, now_ms)
                )
            except self._errors as exc:
                raise BackendUnavailable(f"Dedup index unavailable: {exc}") from exc
        out = []
        for key in keys:
            out.append(key in new)
            new.discard(key)  # a second copy in the same batch is a repeat
        return out

    def _claim_sqlite(self, namespace: str, keys: Sequence[bytes], now_ms: int) -> set[bytes]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            new = set()
            for key in dict.fromkeys(keys):
                row = conn.execute(
                    "INSERT INTO dedup_keys (namespace, key, claimed_ms) VALUES (?, ?, ?) "
                    "ON CONFLICT DO NOTHING RETURNING key",
                    (namespace, key, now_ms),
                ).fetchone()
                if row is not None:
                    new.add(bytes(row[0]))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return new

    def _claim_pg(self, namespace: str, keys: Sequence[bytes], now_ms: int) -> set[bytes]:
        rows = self._conn.execute(
            "INSERT INTO dedup_keys (namespace, key, claimed_ms) "
            "SELECT %s, k, %s FROM unnest(%s::bytea[]) AS k "
            "ON CONFLICT DO NOTHING RETURNING key",
            (namespace, now_ms, list(dict.fromkeys(keys))),
        ).fetchall()
        return {bytes(row[0]) for row in rows}

    def purge(self, older_than_ms: int) -> int:
        """Forget keys claimed before the cut-off."""
        marker = "%s" if self._pg else "?"
        with self._lock:
            try:
                cursor = self._conn.execute(
                    f"DELETE FROM dedup_keys WHERE claimed_ms < {marker}",  # noqa: S608
                    (older_than_ms,),
                )
            except self._errors as exc:
                raise BackendUnavailable(f"Dedup index unavailable: {exc}") from exc
        return int(cursor.rowcount)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()
