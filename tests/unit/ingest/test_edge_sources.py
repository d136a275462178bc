"""HTTP and WebSocket sources on the embedded defaults (SQLite, in-process channels)."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
from starlette.testclient import TestClient

from hopper.config import HopperSettings
from hopper.edge import create_app
from hopper.events import encode_batch
from hopper.store import open_event_store
from hopper.testing import NOW_MS, FrozenClock, bearer, create_token, make_batch, page_view

PROTOBUF = {"content-type": "application/x-protobuf"}


@pytest.fixture
def client(settings: HopperSettings, token: str) -> Iterator[TestClient]:
    app = create_app(settings, clock=FrozenClock(NOW_MS), run_jobs=False)
    with TestClient(app, headers=bearer(token)) as test_client:
        yield test_client


def _count(settings: HopperSettings, table: str) -> int:
    store = open_event_store(settings.store)
    try:
        return store.count(table)
    finally:
        store.close()


def test_post_stores_events_and_answers_counts(
    client: TestClient, settings: HopperSettings
) -> None:
    response = client.post("/v1/events", content=make_batch(10), headers=PROTOBUF)
    assert response.status_code == 200
    assert response.json() == {"accepted": 10, "duplicates": 0, "rejected": 0, "results": []}
    assert _count(settings, "reader_events") == 10
    assert _count(settings, "raw_events") == 10


def test_resent_batch_is_all_duplicates(client: TestClient, settings: HopperSettings) -> None:
    client.post("/v1/events", content=make_batch(5), headers=PROTOBUF)
    response = client.post("/v1/events", content=make_batch(5), headers=PROTOBUF)
    assert response.json()["duplicates"] == 5
    assert response.json()["accepted"] == 0
    assert _count(settings, "reader_events") == 5


def test_bad_events_are_recorded_and_good_neighbours_stored(
    client: TestClient, settings: HopperSettings
) -> None:
    payload = encode_batch(
        [page_view(1), b"\x0a\xff", page_view(2, app_time_ms=NOW_MS + 3_600_000), page_view(3)]
    )
    body = client.post("/v1/events", content=payload, headers=PROTOBUF).json()
    assert body["accepted"] == 2
    assert body["rejected"] == 2
    assert [(r["index"], r["reason"]) for r in body["results"]] == [
        (1, "undecodable"),
        (2, "in_future"),
    ]
    assert _count(settings, "reader_events") == 2
    assert _count(settings, "reader_events_errors") == 2


def test_garbage_body_is_400_and_recorded(client: TestClient, settings: HopperSettings) -> None:
    response = client.post("/v1/events", content=b"\xff\xff\xff", headers=PROTOBUF)
    assert response.status_code == 400
    assert response.json()["results"][0]["reason"] == "undecodable"
    assert _count(settings, "reader_events_errors") == 1


def test_wrong_content_type_is_415_and_recorded(
    client: TestClient, settings: HopperSettings
) -> None:
    response = client.post(
        "/v1/events", content=b'{"a": 1}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 415
    assert response.json()["results"][0]["reason"] == "unsupported_media_type"
    assert _count(settings, "reader_events_errors") == 1


def test_body_over_the_limit_is_413_and_recorded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from hopper.config import load_settings

    small = load_settings(store={"sqlite_path": tmp_path / "e.db"}, ingest={"max_body_bytes": 1000})
    headers = bearer(create_token(small.store))
    with TestClient(
        create_app(small, clock=FrozenClock(), run_jobs=False), headers=headers
    ) as client:
        response = client.post("/v1/events", content=make_batch(50), headers=PROTOBUF)
    assert response.status_code == 413
    assert response.json()["results"][0]["reason"] == "too_large"
    assert _count(small, "reader_events_errors") == 1


def test_websocket_acks_each_frame_with_its_sequence_number(
    client: TestClient, settings: HopperSettings
) -> None:
    with client.websocket_connect("/v1/events/ws") as ws:
        ws.send_bytes(make_batch(3))
        ws.send_bytes(make_batch(3))  # same events again: duplicates
        ws.send_bytes(make_batch(2, start=100))
        acks = sorted((orjson.loads(ws.receive_text()) for _ in range(3)), key=lambda a: a["seq"])
    assert [(a["seq"], a["accepted"], a["duplicates"]) for a in acks] == [
        (1, 3, 0),
        (2, 0, 3),
        (3, 2, 0),
    ]
    assert _count(settings, "reader_events") == 5


def test_websocket_text_frame_is_rejected_and_recorded(
    client: TestClient, settings: HopperSettings
) -> None:
    with client.websocket_connect("/v1/events/ws") as ws:
        ws.send_text("hello")
        ack = orjson.loads(ws.receive_text())
    assert ack["seq"] == 1
    assert ack["results"][0]["reason"] == "unsupported_media_type"
    assert _count(settings, "reader_events_errors") == 1


def test_stream_relays_protos_one_event_per_message_and_lp_events_as_json(
    client: TestClient,
) -> None:
    events = [page_view(n) for n in range(3)]
    with (
        client.websocket_connect("/v1/stream/protos") as protos,
        client.websocket_connect("/v1/stream/lp-events") as lp,
    ):
        assert orjson.loads(protos.receive_text()) == {"subscribed": "protos"}
        assert orjson.loads(lp.receive_text()) == {"subscribed": "lp-events"}
        client.post("/v1/events", content=encode_batch(events), headers=PROTOBUF)
        raw = [protos.receive_bytes() for _ in range(3)]
        docs = [orjson.loads(lp.receive_text()) for _ in range(3)]
    assert raw == [e.SerializeToString() for e in events]
    assert [d["payload"]["page"] for d in docs] == [0, 1, 2]
    assert docs[0]["type"] == "page_viewed"
    assert docs[0]["username"] == "student0001"


def test_unknown_stream_channel_is_refused(client: TestClient) -> None:
    from starlette.websockets import WebSocketDisconnect

    with (
        client.websocket_connect("/v1/stream/nope") as ws,
        pytest.raises(WebSocketDisconnect) as info,
    ):
        ws.receive_text()
    assert info.value.code == 1008


def test_health_passes_and_metrics_count_by_component(client: TestClient) -> None:
    client.post("/v1/events", content=make_batch(4), headers=PROTOBUF)
    client.post("/v1/events", content=encode_batch([b"\x0a\xff"]), headers=PROTOBUF)
    health = client.get("/health")
    assert health.status_code == 200
    assert health.headers["content-type"].startswith("application/health+json")
    body = health.json()
    assert body["status"] == "pass"
    assert body["ok"] == 1
    assert body["checks"]["store"]["status"] == "pass"
    metrics = client.get("/metrics").text
    assert 'events_received_total{component="http"} 5.0' in metrics
    assert 'events_sent_total{component="store"} 4.0' in metrics
    assert 'events_rejected_total{component="decode",reason="undecodable"} 1.0' in metrics
    assert "intake_queue_batches" in metrics
    assert "store_commit_seconds_bucket" in metrics
