"""A full intake queue is back pressure: 503 + Retry-After on HTTP, held acks on WebSocket."""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import pytest
from starlette.testclient import TestClient

from hopper.config import HopperSettings, load_settings
from hopper.edge import create_app
from hopper.testing import NOW_MS, FrozenClock, bearer, create_token, make_batch

PROTOBUF = {"content-type": "application/x-protobuf"}


@pytest.fixture
def small_queue(tmp_path) -> HopperSettings:  # type: ignore[no-untyped-def]
    return load_settings(
        store={"sqlite_path": tmp_path / "e.db"},
        ingest={"queue_max_batches": 2, "retry_after_secs": 3, "http_admission_wait_secs": 0.2},
    )


@pytest.fixture
def client(small_queue: HopperSettings) -> Iterator[TestClient]:
    app = create_app(small_queue, clock=FrozenClock(NOW_MS), run_jobs=False)
    with TestClient(app, headers=bearer(create_token(small_queue.store))) as c:
        yield c


def test_full_queue_answers_503_with_retry_after_then_recovers(client: TestClient) -> None:
    intake = client.app.state.node.intake  # type: ignore[attr-defined]
    held = [intake.try_admit("other", 10), intake.try_admit("other", 10)]
    assert all(held)  # another client holds every slot
    response = client.post("/v1/events", content=make_batch(3), headers=PROTOBUF)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"
    health = client.get("/health").json()
    assert health["checks"]["intake_queue"]["status"] == "warn"
    for ticket in held:
        intake.release(ticket)
    response = client.post("/v1/events", content=make_batch(3), headers=PROTOBUF)
    assert response.status_code == 200
    assert response.json()["accepted"] == 3


def test_websocket_ack_waits_while_the_queue_is_full(client: TestClient) -> None:
    intake = client.app.state.node.intake  # type: ignore[attr-defined]
    with client.websocket_connect("/v1/events/ws") as ws:
        held = [intake.try_admit("other", 10), intake.try_admit("other", 10)]
        assert all(held)
        ws.send_bytes(make_batch(4))
        time.sleep(0.3)
        assert intake.depth == 2  # the frame is held back, not admitted beyond the bound
        for ticket in held:
            intake.release(ticket)
        ack = orjson.loads(ws.receive_text())
    assert (ack["seq"], ack["accepted"]) == (1, 4)


def test_many_pipelined_frames_through_a_tiny_queue_lose_nothing(client: TestClient) -> None:
    with client.websocket_connect("/v1/events/ws") as ws:
        for n in range(50):
            ws.send_bytes(make_batch(10, start=n * 10))
        acks = [orjson.loads(ws.receive_text()) for _ in range(50)]
    assert sorted(a["seq"] for a in acks) == list(range(1, 51))
    assert sum(a["accepted"] for a in acks) == 500
