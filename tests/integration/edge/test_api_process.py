"""The analytics API in its own process (``server.api_port``), beside a real node.

The node starts it, feeds it the writer's figures, starts it again when it dies and stops
it with itself; a node killed outright takes it along (its pipe ends). Run on SQLite and
on the real PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient
from support.processes import HopperProcess, write_config

from hopper.client import make_event
from hopper.config import HopperSettings, load_settings
from hopper.edge import create_app
from hopper.edge.jobs import EDGE_JOBS
from hopper.events import encode_batch
from hopper.testing import FrozenClock, bearer, create_token, free_port

pytestmark = pytest.mark.integration

NOW = 1_790_000_000_000
PROTOBUF = {"content-type": "application/x-protobuf"}


def _until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Return ``check()`` once it is truthy (it may raise httpx errors meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("not in time")
        time.sleep(0.1)


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> HopperSettings:
    server = {"api_port": free_port()}
    if request.param == "sqlite":
        return load_settings(store={"sqlite_path": tmp_path / "e.db"}, server=server)
    url = request.getfixturevalue("postgres_url")
    return load_settings(store={"backend": "postgres", "postgres_url": url}, server=server)


@pytest.fixture
def node(settings: HopperSettings) -> Iterator[tuple[TestClient, str]]:
    app = create_app(settings, clock=FrozenClock(NOW), run_jobs=False)
    with TestClient(app) as client:
        api = f"http://127.0.0.1:{settings.server.api_port}"
        _until(lambda: httpx.get(f"{api}/health").status_code == 200)
        yield client, api


def _events(n: int) -> bytes:
    return encode_batch(
        [
            make_event(
                "page_viewed",
                {"book_id": "b1", "page": p, "duration_ms": 30_000},
                username="kid1",
                device_id="tab1",
                school_id="s1",
                app_time_ms=NOW - 3_600_000 + p * 30_000,
            )
            for p in range(1, n + 1)
        ]
    )


def test_the_api_process_answers_as_the_node_does(
    node: tuple[TestClient, str], settings: HopperSettings
) -> None:
    client, api = node
    ingest = create_token(settings.store, "ingest")
    apps, devops = create_token(settings.store, "apps"), create_token(settings.store, "devops")
    sent = client.post("/v1/events", content=_events(5), headers={**PROTOBUF, **bearer(ingest)})
    assert sent.json()["accepted"] == 5
    EDGE_JOBS["process"].run(settings, FrozenClock(NOW))
    here = client.get("/v1/students/kid1", headers=bearer(apps))
    there = httpx.get(f"{api}/v1/students/kid1", headers=bearer(apps))
    assert there.status_code == 200 and there.json() == here.json()
    assert there.json()["pages_read"] == 5
    # The writer's figures reach it from the node: it has committed once by now.
    ingest_report = _until(
        lambda: (
            r
            if (r := httpx.get(f"{api}/v1/devops/ingest", headers=bearer(devops)).json())[
                "last_commit_age_s"
            ]
            is not None
            else None
        ),
        timeout=5,
    )
    assert ingest_report["queue_capacity"] == settings.ingest.queue_max_batches
    assert ingest_report["store"] == settings.store.backend
    # Tokens are checked there as here; the live monitor stays on the main port.
    assert httpx.get(f"{api}/v1/students/kid1").status_code == 401
    assert httpx.get(f"{api}/v1/students/kid1", headers=bearer(devops)).status_code == 403
    teachers = create_token(settings.store, "teachers")
    monitor = httpx.get(f"{api}/v1/monitor/classes/5a", headers=bearer(teachers))
    assert monitor.status_code == 404 and "main port" in monitor.json()["detail"]
    assert httpx.post(
        f"{api}/v1/events", content=_events(1), headers=bearer(ingest)
    ).status_code in (
        404,
        405,
    )  # it takes no events
    health = client.get("/health").json()
    check = health["checks"]["api_process"]
    assert check["status"] == "pass" and check["port"] == settings.server.api_port
    assert health["api_process_ok"] == 1
    # Its own metrics: the requests it served, behind the metrics scope.
    assert httpx.get(f"{api}/metrics").status_code == 401
    assert httpx.get(f"{api}/metrics", headers=bearer(apps)).status_code == 403
    scraped = httpx.get(f"{api}/metrics", headers=bearer(create_token(settings.store, "metrics")))
    assert scraped.status_code == 200
    assert 'api_request_seconds_count{endpoint="/v1/students/{username}",status="2xx"} 1.0' in (
        scraped.text
    )
    assert 'auth_failures_total{reason="missing"}' in scraped.text


def test_a_dead_api_process_is_started_again(node: tuple[TestClient, str]) -> None:
    client, api = node
    first = httpx.get(f"{api}/health").json()["pid"]
    os.kill(first, signal.SIGKILL)
    second = _until(lambda: (pid := httpx.get(f"{api}/health").json()["pid"]) != first and pid)
    assert second != first
    check = client.get("/health").json()["checks"]["api_process"]
    assert check["status"] == "pass" and check["restarts"] == 1


def test_the_api_process_ends_with_the_node(tmp_path: Path) -> None:
    port, api_port = free_port(), free_port()
    config = tmp_path / "hopper.toml"
    write_config(
        config,
        {
            "server": {"host": "127.0.0.1", "port": port, "api_port": api_port},
            "store": {"sqlite_path": str(tmp_path / "e.db")},
        },
    )
    server = HopperProcess(config, port, tmp_path / "server.log")
    try:
        with server.log_on_failure():
            server.start()
            api = f"http://127.0.0.1:{api_port}"
            pid = _until(lambda: httpx.get(f"{api}/health").json()["pid"])
            server.stop()  # SIGTERM: the node stops it
            _until(lambda: not _alive(pid), timeout=15)
            server.start()
            pid = _until(lambda: httpx.get(f"{api}/health").json()["pid"])
            server.kill()  # SIGKILL: no shutdown code runs, the pipe ends
            _until(lambda: not _alive(pid), timeout=15)
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{api}/health")
    finally:
        server.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_taken_api_port_warns_and_the_node_goes_on(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()  # accepts, never answers
    try:
        port = taken.getsockname()[1]
        settings = load_settings(
            store={"sqlite_path": tmp_path / "e.db"}, server={"api_port": port}
        )
        with TestClient(create_app(settings, clock=FrozenClock(NOW), run_jobs=False)) as client:
            check = _until(
                lambda: (
                    (c := client.get("/health").json()["checks"]["api_process"])["status"] == "warn"
                    and c.get("restarts", 0) >= 1
                    and c
                )
            )
            assert f"does not answer on port {port}" in check["output"]
            assert client.get("/health").json()["api_process_ok"] == 0
            ingest = create_token(settings.store, "ingest")
            sent = client.post(
                "/v1/events", content=_events(2), headers={**PROTOBUF, **bearer(ingest)}
            )
            assert sent.json()["accepted"] == 2  # the node itself is not harmed
    finally:
        taken.close()


def test_the_api_port_bounds_connections_and_slow_headers(tmp_path: Path) -> None:
    api_port = free_port()
    settings = load_settings(
        store={"sqlite_path": tmp_path / "e.db"},
        server={"api_port": api_port, "max_connections": 2, "header_timeout_secs": 1.0},
    )
    with TestClient(create_app(settings, clock=FrozenClock(NOW), run_jobs=False)):
        api = f"http://127.0.0.1:{api_port}"
        _until(lambda: httpx.get(f"{api}/health").status_code == 200)
        slow = [socket.create_connection(("127.0.0.1", api_port)) for _ in range(2)]
        try:
            for s in slow:
                s.sendall(b"GET /v1/students/kid1 HTTP/1.1\r\n")  # and never the rest
            time.sleep(0.2)
            # A third connection is refused at once: the slow ones hold the two places.
            refused = httpx.get(f"{api}/health")
            assert refused.status_code == 503
            # The slow ones are closed when their headers do not come in time.
            for s in slow:
                s.settimeout(5)  # a server that kept it open would make recv time out
                while s.recv(1024):
                    pass
            assert _until(lambda: httpx.get(f"{api}/health").status_code == 200, timeout=5)
        finally:
            for s in slow:
                s.close()
