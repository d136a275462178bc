"""Shared fixtures: settings in temp dirs, and real-server probes.

A test that needs a server skips when the server is absent, unless
HOPPER_REQUIRE_SERVICES=1 (set by .ci/run), in which case it fails.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hopper.config import HopperSettings, load_settings

POSTGRES_URL = os.environ.get(
    "HOPPER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("HOPPER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
MQTT_HOST, MQTT_PORT = "127.0.0.1", int(os.environ.get("HOPPER_TEST_MQTT_PORT", "1883"))

SERVICES = {
    "postgres": ("127.0.0.1", 5432),
    "redis": ("127.0.0.1", 6379),
    "mosquitto": (MQTT_HOST, MQTT_PORT),
    "nats": ("127.0.0.1", 4222),
    "mariadb": ("127.0.0.1", 3306),
}


@pytest.fixture(autouse=True)
def _no_log_handler_left() -> Iterator[None]:
    """Remove the stderr handler a CLI command installs, so no later test reads its lines."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in list(root.handlers):
        if getattr(handler, "_hopper", False):
            root.removeHandler(handler)
    root.setLevel(level)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str) -> None:
    """Skip the test if the server is down, or fail if HOPPER_REQUIRE_SERVICES=1."""
    host, port = SERVICES[name]
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port} (scripts/services starts it)"
    if os.environ.get("HOPPER_REQUIRE_SERVICES") == "1":
        pytest.fail(message + "; HOPPER_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(message)


@pytest.fixture
def settings(tmp_path: Path) -> HopperSettings:
    """Embedded-default settings with the store in a temp dir."""
    return load_settings(store={"backend": "sqlite", "sqlite_path": tmp_path / "events.db"})


@pytest.fixture
def token(settings: HopperSettings) -> str:
    """A token with every scope but admin, in the ``settings`` store."""
    from hopper.testing import create_token

    return create_token(settings.store, "ingest", "stream", "metrics")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL schema of its own for one test."""
    require_service("postgres")
    import psycopg

    schema = f"hopper_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
