"""The README's first command: `hopper demo` serves, streams a school, prints URLs and counts."""

from __future__ import annotations

import re
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_demo_streams_a_simulated_school_and_stops_after_its_duration(tmp_path: Path) -> None:
    port = _free_port()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hopper",
            "demo",
            "--duration",
            "4",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path),
            "--rate",
            "300",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for url in (
        f"http://127.0.0.1:{port}/v1/events",
        f"ws://127.0.0.1:{port}/v1/events/ws",
        f"ws://127.0.0.1:{port}/v1/stream/protos",
        f"http://127.0.0.1:{port}/health",
        f"http://127.0.0.1:{port}/metrics",
    ):
        assert url in out
    counts = re.findall(r"sent (\d+) \| accepted (\d+)", out)
    assert len(counts) >= 3  # a live line every second
    accepted = int(re.search(r"Stopped\. (\d+) events stored", out).group(1))  # type: ignore[union-attr]
    assert accepted > 500
    with sqlite3.connect(tmp_path / "events.db") as db:
        stored = db.execute("SELECT count(*) FROM reader_events").fetchone()[0]
        types = {row[0] for row in db.execute("SELECT DISTINCT event_type FROM reader_events")}
        errors = db.execute("SELECT DISTINCT reason FROM reader_events_errors").fetchall()
    assert stored == accepted
    assert {"app_session_started", "book_opened", "page_viewed"} <= types
    # The simulated school includes tablets with a clock an hour ahead.
    assert errors in ([], [("in_future",)])
