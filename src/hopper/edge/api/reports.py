"""Reports kept until the data under them changes: the portal's school and class reports.

A report is computed from the derived tables (``an_*``), which only a processing run
rewrites, and the reference data (``ec_*``), which only the import rewrites; each records
that it did (a finished row of ``an_runs``, ``ec_table_state.last_changed_ms``). So a
report's body is kept, with its ETag, under the data's version read just before it was
computed, and served again while the version is the same and the school's day has not
turned. The version is one indexed lookup, wherever the run or the import ran (another
process included); a school report costs ~20 ms of one interpreter's time, a kept one
a lookup. Memory is bounded by bytes (least recently used first out).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from fastapi import Request, Response

from hopper.store.analytics import an_runs
from hopper.store.reference import ec_table_state

DataVersion = tuple[Any, ...]

# The newest finished run, and the sum of the reference tables' last changes: each moves
# strictly forward when its table changes (the import sees to it), so the sum does too, and
# the count of tables moves when a table is recorded for the first time.
_VERSION = sa.select(
    sa.select(sa.func.max(an_runs.c.run_id))
    .where(an_runs.c.finished_ms.is_not(None))
    .scalar_subquery(),
    sa.select(sa.func.sum(ec_table_state.c.last_changed_ms)).scalar_subquery(),
    sa.select(sa.func.count()).select_from(ec_table_state).scalar_subquery(),
)


def data_version(conn: sa.Connection) -> DataVersion:
    """Return the version of the data reports are computed from (moves when it changes)."""
    row = conn.execute(_VERSION).one()
    return tuple(row)


@dataclass(frozen=True)
class Report:
    """A report's JSON body and its ETag (a hash of the body)."""

    content: bytes
    etag: str

    @classmethod
    def of(cls, body: Any) -> Report:
        """Serialise ``body`` and tag it."""
        content = orjson.dumps(body)
        return cls(content, '"' + hashlib.blake2b(content, digest_size=12).hexdigest() + '"')

    def response(self, request: Request) -> Response:
        """Answer the report; ``304 Not Modified`` when the client has this version."""
        headers = {"ETag": self.etag, "Cache-Control": "private, no-cache"}
        wanted = request.headers.get("if-none-match", "")
        if self.etag in (t.strip() for t in wanted.split(",")):
            return Response(status_code=304, headers=headers)
        return Response(self.content, media_type="application/json", headers=headers)


@dataclass(frozen=True)
class _Kept:
    report: Report
    version: DataVersion
    until_ms: int  # the end of the school's day the report counted "today" in


class ReportCache:
    """Reports by key, each valid for one data version and until its day's end."""

    def __init__(self, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._kept: OrderedDict[Hashable, _Kept] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, version: DataVersion, now_ms: int) -> Report | None:
        """Return the report kept under ``key`` if it is still the current one."""
        with self._lock:
            kept = self._kept.get(key)
            if kept is None or kept.version != version or now_ms >= kept.until_ms:
                self.misses += 1
                return None
            self._kept.move_to_end(key)
            self.hits += 1
            return kept.report

    def put(self, key: Hashable, report: Report, version: DataVersion, until_ms: int) -> None:
        """Keep ``report`` under ``key`` (not if it alone would take a quarter of the room)."""
        size = len(report.content)
        if size * 4 > self.max_bytes:
            return
        with self._lock:
            old = self._kept.pop(key, None)
            if old is not None:
                self._bytes -= len(old.report.content)
            self._kept[key] = _Kept(report, version, until_ms)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._kept.popitem(last=False)
                self._bytes -= len(dropped.report.content)

    def report(
        self,
        conn: sa.Connection,
        key: Hashable,
        now_ms: int,
        compute: Callable[[], tuple[Any, int]],
    ) -> Report:
        """Return the current report under ``key``; ``compute`` gives its body and day's end."""
        version = data_version(conn)  # before computing: the body is at least this new
        kept = self.get(key, version, now_ms)
        if kept is not None:
            return kept
        body, until_ms = compute()
        report = Report.of(body)
        self.put(key, report, version, until_ms)
        return report

    @property
    def size_bytes(self) -> int:
        """The bytes of report bodies kept."""
        return self._bytes
