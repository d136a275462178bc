"""Health answers for Zabbix: JSON readable with JSONPath, HTTP 200 (pass/warn) or 503 (fail).

The edge node's ``/health`` and a worker's share these shapes: ``checks`` holds one entry
per dependency (``status`` and, when not passing, ``output``), and flat ``*_ok`` fields
give Zabbix a number per check.
"""

from __future__ import annotations

from typing import Any

HEALTH_MEDIA_TYPE = "application/health+json"

Checks = dict[str, dict[str, Any]]


def check(error: str | None, *, failure: str = "fail", **fields: Any) -> dict[str, Any]:
    """One check's entry: ``pass``, or ``failure`` with ``error`` as its output."""
    entry: dict[str, Any] = {"status": "pass" if error is None else failure, **fields}
    if error is not None:
        entry["output"] = error
    return entry


def ok_flag(checks: Checks, name: str) -> int | None:
    """1 when the check passes, 0 when not, None when it is not run (Zabbix discards it)."""
    return int(checks[name]["status"] == "pass") if name in checks else None


def overall(checks: Checks) -> str:
    """The worst status among the checks."""
    statuses = {c["status"] for c in checks.values()}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"
