"""The README's first command: `hopper demo` serves, streams a school, prints URLs and counts."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest
from support.processes import free_port

pytestmark = pytest.mark.e2e


def test_demo_streams_a_simulated_school_and_stops_after_its_duration(tmp_path: Path) -> None:
    port = free_port()
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


def test_the_demo_prints_a_token_and_commands_that_work(tmp_path: Path) -> None:
    port = free_port()
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hopper",
            "demo",
            "--duration",
            "30",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path),
            "--rate",
            "200",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert demo.stdout is not None
        printed = []
        for line in demo.stdout:
            printed.append(line)
            if "students streaming" in line:
                break
        text = "".join(printed)
        token = re.search(r"export HOPPER_TOKEN=(hop_\S+)", text).group(1)  # type: ignore[union-attr]
        assert f"stream lp-events --url http://127.0.0.1:{port}" in text
        send_file = tmp_path / "my-events.jsonl"
        assert f"send {send_file} --url http://127.0.0.1:{port}" in text
        env = {**os.environ, "HOPPER_TOKEN": token}
        base = f"http://127.0.0.1:{port}"
        stream = subprocess.run(
            [sys.executable, "-m", "hopper", "stream", "lp-events", "--url", base, "--count", "3"],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            check=False,
        )
        assert stream.returncode == 0, stream.stderr
        lines = stream.stdout.strip().splitlines()
        assert len(lines) == 3 and all(orjson.loads(line)["school_id"] for line in lines)
        sent = subprocess.run(
            [sys.executable, "-m", "hopper", "send", str(send_file), "--url", base],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
        assert "accepted 3, duplicates 0, rejected 0." in sent.stdout
        assert httpx.get(f"{base}/metrics").status_code == 401
        metrics = httpx.get(f"{base}/metrics", headers={"authorization": f"Bearer {token}"})
        assert metrics.status_code == 200
    finally:
        demo.terminate()
        demo.communicate(timeout=30)
    assert demo.returncode == 0
