"""Logging set-up: console or JSON lines, with secrets and usernames redacted."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, TextIO

import orjson

# Credentials in URLs (postgresql://user:pass@host), key=value secrets, and usernames.
_SECRET_PATTERNS = (
    (re.compile(r"(?P<scheme>\w[\w+.-]*://)[^/@\s:]+:[^/@\s]+@"), r"\g<scheme>***:***@"),
    (
        re.compile(r"(?i)\b(password|passwd|token|secret|api_key|username)\b(\s*[=:]\s*)\S+"),
        r"\1\2***",
    ),
)


def redact(text: str) -> str:
    """Mask credentials, tokens and usernames in a log message."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites every record's message so secrets never reach a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the formatted message in place; never drops a record."""
        message = record.getMessage()
        record.msg = redact(message)
        record.args = None
        return True


class ConsoleFormatter(logging.Formatter):
    """Human-readable lines; tracebacks are redacted like messages."""

    def formatException(self, ei: Any) -> str:  # noqa: N802 - overrides logging's name
        """Render a traceback with secrets masked."""
        return redact(super().formatException(ei))


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """Render a record as JSON."""
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry).decode()


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time of each record."""

    # Bound at emit time, not at set-up: a redirected stderr (a CLI runner, a daemon
    # re-opening its log) may be closed while background threads still log.
    @property
    def stream(self) -> TextIO:
        """The current standard error."""
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure_logging(level: str = "INFO", fmt: str = "console") -> None:
    """Install Hopper's handler on the root logger (idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_hopper", False):
            root.removeHandler(handler)
    handler = StderrHandler()
    handler._hopper = True  # type: ignore[attr-defined]  # noqa: SLF001
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(ConsoleFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
