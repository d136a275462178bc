"""A worker's status port: /health for Zabbix and orchestrators, /metrics behind a token.

Real workers (the topic consumer, the intake and writer, a SQLite store) served by real
uvicorn on a real port; the broker-down case points the worker at a NATS port that
refuses connections.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.processing_cases import pending_write

from hopper.access import Scope, create_token
from hopper.config import HopperSettings, load_settings
from hopper.errors import ConfigError
from hopper.pipeline.topics import open_topic_log
from hopper.testing import free_port
from hopper.worker import StatusServer, Worker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

NOW_MS = 1_780_000_000_000
TOPIC = "edge-events"


def _settings(tmp_path: Path, **topics: Any) -> HopperSettings:
    return load_settings(
        store={"sqlite_path": tmp_path / "central.db"},
        topics={
            "backend": "sqlite",
            "sqlite_path": tmp_path / "topics.db",
            "partitions": 2,
            "external": [TOPIC],
            **topics,
        },
        pipeline={
            "central": {
                "sources": [f"topic:{TOPIC}"],
                "stages": ["decode", "validate", "dedup"],
                "sinks": ["store"],
            }
        },
    )


def _events(n: int) -> list[tuple[bytes, bytes]]:
    objs = [
        {
            "type": "page_viewed",
            "username": f"s{i}",
            "device_id": f"tab-{i}",
            "school_id": "school-1",
            "app_time_ms": int(time.time() * 1000) - 60_000 + i,
            "payload": {"book_id": "b", "page": i + 1, "duration_ms": 9000},
        }
        for i in range(n)
    ]
    return [(e.device_id.encode(), e.raw) for e in pending_write(objs, NOW_MS).events]


def _until(probe: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return value


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Worker, str]]:
    settings = _settings(tmp_path)
    log = open_topic_log(settings.topics)
    try:
        log.ensure_topic(TOPIC, 2)
        log.append(TOPIC, _events(5))
    finally:
        log.close()
    worker = Worker(settings, "central")
    port = free_port()
    status = StatusServer(worker, "127.0.0.1", port)
    status.start()
    worker.start()
    try:
        yield worker, f"http://127.0.0.1:{port}"
    finally:
        worker.stop()
        status.stop()


def test_health_passes_once_the_worker_consumes_and_counts_what_it_committed(
    served: tuple[Worker, str],
) -> None:
    _, base = served

    def committed() -> dict[str, Any] | None:
        answer = httpx.get(f"{base}/health")
        body = answer.json()
        return body if answer.status_code == 200 and body["committed"] == 5 else None

    body = _until(committed)
    assert httpx.get(f"{base}/health").headers["content-type"] == "application/health+json"
    assert (body["status"], body["ok"], body["store_ok"], body["consumers_ok"]) == (
        "pass",
        1,
        1,
        1,
    )
    assert (body["role"], body["topology"], body["consumed"]) == ("worker", "central", 5)
    assert body["checks"]["consumers"]["topics"] == [f"topic:{TOPIC}"]
    assert body["checks"]["store"]["backend"] == "sqlite"
    assert body["sinks_ok"] == 1 and body["checks"]["sinks"]["sinks"] == ["store"]
    assert body["last_commit_age_s"] is not None and body["queue_depth"] == 0


def test_metrics_need_a_token_with_the_metrics_scope(served: tuple[Worker, str]) -> None:
    worker, base = served
    assert httpx.get(f"{base}/metrics").status_code == 401
    wrong = create_token(worker.settings.store, "tablets", [Scope.INGEST], None, NOW_MS)
    headers = {"Authorization": f"Bearer {wrong.token}"}
    assert httpx.get(f"{base}/metrics", headers=headers).status_code == 403
    token = create_token(worker.settings.store, "grafana", [Scope.METRICS], None, NOW_MS)
    headers = {"Authorization": f"Bearer {token.token}"}
    _until(lambda: httpx.get(f"{base}/health").json()["committed"] == 5)
    answer = httpx.get(f"{base}/metrics", headers=headers)
    assert answer.status_code == 200
    lines = answer.text.splitlines()
    # The worker's own counters: the five records through the source and into the store.
    assert 'events_sent_total{component="topic:edge-events"} 5.0' in lines
    assert 'events_sent_total{component="store"} 5.0' in lines
    assert token.token not in answer.text


def test_a_broker_that_refuses_connections_fails_the_health(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, backend="nats", nats_url=f"nats://127.0.0.1:{free_port()}", partitions=1
    )
    worker = Worker(settings, "central")
    port = free_port()
    status = StatusServer(worker, "127.0.0.1", port)
    status.start()
    worker.start()
    try:

        def failing() -> dict[str, Any] | None:
            answer = httpx.get(f"http://127.0.0.1:{port}/health")
            body = answer.json()
            output = body["checks"]["consumers"].get("output", "")
            return body if answer.status_code == 503 and "topic:" in output else None

        body = _until(failing)
        assert body["status"] == "fail" and body["consumers_ok"] == 0
        assert body["store_ok"] == 1  # the store is fine; the topic is not
    finally:
        worker.stop()
        status.stop()


def test_a_taken_status_port_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        worker = Worker(_settings(tmp_path), "central")
        try:
            port = taken.getsockname()[1]
            server = StatusServer(worker, "127.0.0.1", port)
            with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
                server.start()
            server.stop()  # after a failed start too: closes its token store
        finally:
            worker.resources.close()
