"""Health for Zabbix: JSON readable with JSONPath, HTTP 200 (pass/warn) or 503 (fail)."""

from __future__ import annotations

import asyncio
from typing import Any

from hopper.edge.ecimport import ec_import_health
from hopper.edge.node import EdgeNode
from hopper.observe.health import HEALTH_MEDIA_TYPE, Checks, check, ok_flag, overall

__all__ = ["HEALTH_MEDIA_TYPE", "health_report"]


async def health_report(node: EdgeNode) -> tuple[int, dict[str, Any]]:
    """Check every dependency; return the HTTP status and the body."""
    store_error = await asyncio.to_thread(node.ping_store)
    channels_error = await asyncio.to_thread(node.ping_channels)
    intake = node.intake
    now = node.clock.now_ms()
    checks: Checks = {
        "store": check(
            store_error or (None if intake.is_store_healthy else intake.last_error),
            backend=node.store.backend,
        ),
        "writer": check(None if intake.is_alive else "writer thread is not running"),
        "intake_queue": check(
            "intake queue over 80% full" if intake.depth > 0.8 * intake.capacity else None,
            failure="warn",
            depth=intake.depth,
            capacity=intake.capacity,
        ),
        "pubsub": check(
            channels_error or (None if node.is_publishing_healthy else "last publish failed"),
            failure="warn",
            backend=node.channels.backend,
        ),
    }
    free = await asyncio.to_thread(node.free_disk_bytes)
    minimum = node.settings.store.min_free_disk_bytes
    checks["disk"] = check(
        None
        if free is None or free >= minimum
        else f"{free} bytes free on the store's volume, under store.min_free_disk_bytes",
        failure="warn",
        free_bytes=free,
    )
    if node.mqtt is not None:
        checks["mqtt"] = check(
            None if node.mqtt.is_connected else "not connected to the MQTT broker",
            failure="warn",
            topic=node.settings.mqtt.topic,
        )
    if node.api_process is not None:
        api = node.api_process
        problem = await api.problem()
        checks["api_process"] = check(
            None if problem is None else f"the analytics API process is not serving: {problem}",
            failure="warn",
            port=api.port,
            restarts=api.restarts,
        )
    if node.settings.ecimport.sources:
        problem, fields = await asyncio.to_thread(ec_import_health, node.settings, now)
        checks["ec_import"] = check(problem, failure="warn", **fields)
    status = overall(checks)
    last_commit = intake.last_commit_ms
    body: dict[str, Any] = {
        "status": status,
        "ok": int(status != "fail"),
        "store_ok": int(checks["store"]["status"] == "pass"),
        "pubsub_ok": int(checks["pubsub"]["status"] == "pass"),
        "mqtt_ok": ok_flag(checks, "mqtt"),
        "disk_ok": ok_flag(checks, "disk"),
        "api_process_ok": ok_flag(checks, "api_process"),
        "ec_import_ok": ok_flag(checks, "ec_import"),
        "queue_depth": intake.depth,
        "queue_capacity": intake.capacity,
        "queue_bytes": intake.admission.bytes,
        "disk_free_bytes": free,
        "connections_open": node.guard.open_connections,
        "last_commit_age_s": None if last_commit is None else round((now - last_commit) / 1000, 3),
        "checks": checks,
    }
    return (503 if status == "fail" else 200), body
