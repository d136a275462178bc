"""Checking the e-content import's rows: a source's raw values to a table's typed values.

A row is bad when it is not an object, its key is missing, a value has the wrong type or
does not fit the column; the problem names the column, never a value (only the key's).
"""

from __future__ import annotations

import hashlib
import math
import re
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any

import orjson
import sqlalchemy as sa

from hopper.store.reference import TableShape

_INT32 = 2**31  # INTEGER is 32 bits on PostgreSQL


@dataclass(frozen=True, slots=True)
class BadRow:
    """A source row that was not imported, and why (never a value but the key's)."""

    table: str
    key: str  # "student_id=s9", or "row 17" when the key cannot be read
    problem: str

    def __str__(self) -> str:
        return f"{self.table} {self.key}: {self.problem}"


@dataclass(frozen=True, slots=True)
class CheckedRow:
    """A row ready to stage: its values and hash, or only its key when it is bad."""

    key: tuple[str, ...]
    values: dict[str, Any] | None  # None: bad, but the key is known (keep the old version)
    row_hash: bytes | None = None


class RowChecker:
    """Turns a source's raw rows into a table's typed values, or says what is wrong."""

    def __init__(self, shape: TableShape, max_value_chars: int) -> None:
        self.shape = shape
        self._max_chars = max_value_chars
        columns = {c.name: c for c in shape.table.columns}
        self._integers = {
            name for name in shape.columns if isinstance(columns[name].type, sa.Integer)
        }
        self._defaults = {
            name: str(columns[name].server_default.arg)  # type: ignore[union-attr]
            for name in shape.columns
            if columns[name].server_default is not None
        }
        self._not_null = {
            name
            for name in shape.columns
            if not columns[name].nullable and name not in self._defaults
        }
        self._plain_text = set(shape.columns) - self._integers - set(self._defaults)
        self._plain_text -= self._not_null
        # Columns a query must answer: without them every row would be bad.
        self.required = tuple(name for name in shape.columns if name in self._not_null)

    def key_text(self, key: Sequence[str]) -> str:
        """Show a key as ``class_id=c1 student_id=s2``."""
        return " ".join(f"{k}={_short(v)}" for k, v in zip(self.shape.key, key, strict=True))

    def check(self, raw: Any, position: int) -> tuple[CheckedRow | None, BadRow | None]:
        """Check one raw row; return what to stage and what to report."""
        table = self.shape.table.name
        if not isinstance(raw, Mapping):
            return None, BadRow(table, f"row {position}", f"is {_a(raw)}, not an object")
        key: list[str] = []
        for name in self.shape.key:
            try:
                value = self._text(raw.get(name))
            except ValueError as exc:
                return None, BadRow(table, f"row {position}", f"{name} {exc}")
            if not value:
                return None, BadRow(table, f"row {position}", f"has no {name} (the key)")
            key.append(value)
        values: dict[str, Any] = dict(zip(self.shape.key, key, strict=True))
        problem = None
        for name in self.shape.columns[len(key) :]:
            try:
                values[name] = self._value(name, raw.get(name))
            except ValueError as exc:
                problem = problem or f"{name} {exc}"
        if problem is not None:
            return CheckedRow(tuple(key), None), BadRow(table, self.key_text(key), problem)
        digest = hashlib.blake2b(
            orjson.dumps([values[name] for name in self.shape.columns]), digest_size=16
        ).digest()
        return CheckedRow(tuple(key), values, digest), None

    def _value(self, name: str, value: Any) -> str | int | None:
        if isinstance(value, str) and not value and name not in self._plain_text:
            value = None  # "" is no number, no time zone, no username
        if value is None:
            if name in self._defaults:
                return self._defaults[name]
            if name in self._not_null:
                raise ValueError("is missing")
            return None
        if name in self._integers:
            return _integer(value)
        text = self._text(value)
        if name == "time_zone" and not _is_time_zone(text):
            raise ValueError("is not an IANA time zone name (e.g. Europe/Rome)")
        return text

    def _text(self, value: Any) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
            raise ValueError(f"is {_a(value)}, not text")
        if isinstance(value, Decimal):
            if value != value.to_integral_value():
                raise ValueError("is a decimal number, not text")
            value = int(value)
        text = str(value)
        if len(text) > self._max_chars:
            raise ValueError(f"is longer than ecimport.max_value_chars ({self._max_chars})")
        if "\x00" in text:
            raise ValueError("contains the character U+0000")
        if not text.isascii():
            try:
                text.encode()
            except UnicodeEncodeError:
                raise ValueError("is not valid Unicode (a lone surrogate)") from None
        return text


def _integer(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("is a boolean, not an integer")
    if isinstance(value, str):
        if not re.fullmatch(r"\s*-?[0-9]{1,19}\s*", value):
            raise ValueError("is not an integer")
        value = int(value)
    elif isinstance(value, float | Decimal):
        if not math.isfinite(value) or value != int(value):
            raise ValueError("is not a whole number")
        value = int(value)
    elif not isinstance(value, int):
        raise ValueError(f"is {_a(value)}, not an integer")
    if not -_INT32 <= value < _INT32:
        raise ValueError("does not fit in a 32-bit integer")
    return int(value)


@cache
def _is_time_zone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _a(value: Any) -> str:
    """Name a value's JSON/SQL kind, never the value itself."""
    kinds = {bool: "a boolean", float: "a number", dict: "an object", list: "a list"}
    for kind, name in kinds.items():
        if isinstance(value, kind):
            return name
    if isinstance(value, bytes | bytearray | memoryview):
        return "binary data"
    return f"a {type(value).__name__}"


def _short(value: str) -> str:
    return value if len(value) <= 64 else value[:61] + "..."
