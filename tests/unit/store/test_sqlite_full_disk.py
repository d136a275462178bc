"""A really full disk (a small tmpfs): no false acks, the real cause reported, recovery.

SQLite rolls a transaction back by itself when the disk fills; a second ROLLBACK then
failed with "cannot rollback - no transaction is active", which hid the cause in the log
and in /health. Needs permission to mount a tmpfs (root); skipped where it is refused.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from hopper.config import load_settings
from hopper.edge import create_app
from hopper.testing import NOW_MS, FrozenClock, bearer, create_token, make_batch

PROTOBUF = {"content-type": "application/x-protobuf"}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_reported_as_such_and_recovers(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(
        store={"sqlite_path": small_disk / "e.db"}, ingest={"http_ack_timeout_secs": 1.0}
    )
    headers = {**PROTOBUF, **bearer(create_token(settings.store))}
    app = create_app(settings, clock=FrozenClock(NOW_MS), run_jobs=False)
    refused_at = None
    with TestClient(app) as client, caplog.at_level(logging.WARNING):
        for n in range(100):
            batch = make_batch(1000, start=n * 1000)
            response = client.post("/v1/events", content=batch, headers=headers)
            if response.status_code != 200:
                refused_at = n
                break
        assert refused_at is not None, "the 3 MB disk never filled"
        assert response.status_code == 503  # never acknowledged while nothing is stored
        health = client.get("/health")
        assert health.status_code == 503
        assert "database or disk is full" in health.json()["checks"]["store"]["output"]
        assert health.json()["disk_free_bytes"] < 1_000_000
        assert health.json()["checks"]["disk"]["status"] == "warn"
        assert health.json()["disk_ok"] == 0
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        retried = client.post("/v1/events", content=batch, headers=headers)
        assert retried.status_code == 200
        assert retried.json()["accepted"] + retried.json()["duplicates"] == 1000
        assert client.get("/health").json()["checks"]["store"]["status"] == "pass"
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "database or disk is full" in messages
    assert "no transaction is active" not in messages
