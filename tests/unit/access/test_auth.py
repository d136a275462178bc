"""Tokens with scopes and schools on every source and stream; /health stays open."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator

import orjson
import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse

from hopper.client import make_event
from hopper.config import HopperSettings, load_settings
from hopper.edge import create_app
from hopper.events import encode_batch
from hopper.store import open_event_store
from hopper.testing import NOW_MS, FrozenClock, bearer, create_token, make_batch

PROTOBUF = {"content-type": "application/x-protobuf"}


@pytest.fixture
def settings(tmp_path) -> HopperSettings:  # type: ignore[no-untyped-def]
    # A short cache, so that revocation is seen within the test.
    return load_settings(store={"sqlite_path": tmp_path / "e.db"}, auth={"cache_secs": 0.2})


@pytest.fixture
def client(settings: HopperSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, clock=FrozenClock(NOW_MS), run_jobs=False)) as c:
        yield c


def _post(client: TestClient, token: str | None, body: bytes | None = None) -> object:
    headers = {**PROTOBUF, **(bearer(token) if token else {})}
    return client.post("/v1/events", content=body or make_batch(3), headers=headers)


def _rows(settings: HopperSettings, table: str) -> int:
    store = open_event_store(settings.store)
    try:
        return store.count(table)
    finally:
        store.close()


def _school_event(n: int, school: str) -> bytes:
    return make_event(
        "page_viewed",
        {"book_id": "b", "page": n},
        username="s",
        device_id="d",
        school_id=school,
        app_time_ms=NOW_MS + n,
    ).SerializeToString()


def test_http_without_a_token_is_401_and_nothing_is_stored(
    client: TestClient, settings: HopperSettings
) -> None:
    response = _post(client, None)
    assert response.status_code == 401  # type: ignore[attr-defined]
    assert response.headers["www-authenticate"] == "Bearer"  # type: ignore[attr-defined]
    assert _rows(settings, "reader_events") == 0


@pytest.mark.parametrize("token", ["nonsense", "hop_0123456789ab_wrongsecret", "Basic abc"])
def test_http_with_a_bad_token_is_401(client: TestClient, token: str) -> None:
    assert _post(client, token).status_code == 401  # type: ignore[attr-defined]


def test_a_token_without_the_ingest_scope_is_403(
    client: TestClient, settings: HopperSettings
) -> None:
    token = create_token(settings.store, "stream")
    response = _post(client, token)
    assert response.status_code == 403  # type: ignore[attr-defined]
    assert "ingest" in response.json()["error"]  # type: ignore[attr-defined]


def test_an_admin_token_may_do_everything(client: TestClient, settings: HopperSettings) -> None:
    token = create_token(settings.store, "admin")
    assert _post(client, token).status_code == 200  # type: ignore[attr-defined]
    assert client.get("/metrics", headers=bearer(token)).status_code == 200


def test_a_revoked_token_is_refused_within_the_cache_time(
    client: TestClient, settings: HopperSettings
) -> None:
    from hopper.store.tokens import TokenStore

    token = create_token(settings.store, "ingest")
    assert _post(client, token).status_code == 200  # type: ignore[attr-defined]
    tokens = TokenStore.from_settings(settings.store)
    try:
        assert tokens.revoke(token.split("_")[1], NOW_MS)
    finally:
        tokens.close()
    time.sleep(0.3)
    response = _post(client, token, make_batch(3, start=10))
    assert response.status_code == 401  # type: ignore[attr-defined]
    assert "revoked" in response.json()["error"]  # type: ignore[attr-defined]


def test_events_of_another_school_are_rejected_and_recorded_the_rest_stored(
    client: TestClient, settings: HopperSettings
) -> None:
    token = create_token(settings.store, "ingest", schools=["school-a"])
    body = encode_batch([_school_event(1, "school-a"), _school_event(2, "school-b")])
    answer = _post(client, token, body).json()  # type: ignore[attr-defined]
    assert answer["accepted"] == 1
    assert answer["reasons"] == {"school_not_allowed": 1}
    assert answer["results"][0]["index"] == 1
    assert _rows(settings, "reader_events") == 1
    store = open_event_store(settings.store)
    try:
        (error,) = store.errors()
    finally:
        store.close()
    assert error.reason == "school_not_allowed" and error.raw == _school_event(2, "school-b")


def test_tokens_are_stored_as_hashes_only(settings: HopperSettings) -> None:
    token = create_token(settings.store, "ingest")
    with sqlite3.connect(settings.store.sqlite_path) as conn:
        dump = "\n".join(conn.iterdump())
    secret = token.split("_", 2)[2]
    assert token.split("_")[1] in dump  # the public id
    assert secret not in dump


def test_websocket_needs_a_token(client: TestClient) -> None:
    with pytest.raises(WebSocketDenialResponse) as refused:
        with client.websocket_connect("/v1/events/ws"):
            pass
    assert refused.value.status_code == 401


def test_websocket_takes_the_token_in_a_header(
    client: TestClient, settings: HopperSettings
) -> None:
    token = create_token(settings.store, "ingest")
    with client.websocket_connect("/v1/events/ws", headers=bearer(token)) as ws:
        ws.send_bytes(make_batch(2))
        assert ws.receive_json()["accepted"] == 2


def test_websocket_takes_the_token_as_a_browser_subprotocol(
    client: TestClient, settings: HopperSettings
) -> None:
    token = create_token(settings.store, "ingest")
    protocols = ["hopper", f"hopper.bearer.{token}"]
    with client.websocket_connect("/v1/events/ws", subprotocols=protocols) as ws:
        assert ws.accepted_subprotocol == "hopper"  # the token is never echoed
        ws.send_bytes(make_batch(2))
        assert ws.receive_json()["accepted"] == 2


def test_websocket_events_of_another_school_are_rejected(
    client: TestClient, settings: HopperSettings
) -> None:
    token = create_token(settings.store, "ingest", schools=["school-a"])
    with client.websocket_connect("/v1/events/ws", headers=bearer(token)) as ws:
        ws.send_bytes(encode_batch([_school_event(1, "school-b")]))
        assert ws.receive_json()["reasons"] == {"school_not_allowed": 1}


@pytest.mark.parametrize("channel", ["protos", "lp-events"])
def test_streams_need_the_stream_scope(
    client: TestClient, settings: HopperSettings, channel: str
) -> None:
    for token, status in ((None, 401), (create_token(settings.store, "ingest"), 403)):
        headers = bearer(token) if token else {}
        with pytest.raises(WebSocketDenialResponse) as refused:
            with client.websocket_connect(f"/v1/stream/{channel}", headers=headers):
                pass
        assert refused.value.status_code == status


def test_a_school_bound_stream_sees_only_its_schools(
    client: TestClient, settings: HopperSettings
) -> None:
    writer = create_token(settings.store, "ingest")
    reader = create_token(settings.store, "stream", schools=["school-a"])
    body = encode_batch([_school_event(n, "school-b" if n % 2 else "school-a") for n in range(6)])
    with (
        client.websocket_connect("/v1/stream/lp-events", headers=bearer(reader)) as lp,
        client.websocket_connect("/v1/stream/protos", headers=bearer(reader)) as protos,
    ):
        assert lp.receive_json() == {"subscribed": "lp-events"}
        assert protos.receive_json() == {"subscribed": "protos"}
        assert _post(client, writer, body).json()["accepted"] == 6  # type: ignore[attr-defined]
        seen = [orjson.loads(lp.receive_text()) for _ in range(3)]
        raws = [protos.receive_bytes() for _ in range(3)]
    assert {m["school_id"] for m in seen} == {"school-a"}
    assert raws == [_school_event(n, "school-a") for n in (0, 2, 4)]


def test_metrics_need_a_token_unless_opened(client: TestClient, settings: HopperSettings) -> None:
    assert client.get("/metrics").status_code == 401
    assert (
        client.get("/metrics", headers=bearer(create_token(settings.store, "ingest"))).status_code
        == 403
    )
    response = client.get("/metrics", headers=bearer(create_token(settings.store, "metrics")))
    assert response.status_code == 200
    assert b'auth_failures_total{reason="missing"}' in response.content


def test_metrics_open_serves_them_without_a_token(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings(store={"sqlite_path": tmp_path / "e.db"}, auth={"metrics_open": True})
    with TestClient(create_app(settings, clock=FrozenClock(NOW_MS), run_jobs=False)) as client:
        assert client.get("/metrics").status_code == 200
        assert _post(client, None).status_code == 401  # only the metrics are open


def test_health_stays_open_and_shows_no_personal_data(
    client: TestClient, settings: HopperSettings
) -> None:
    token = create_token(settings.store, "ingest")
    _post(client, token, encode_batch([_school_event(1, "school-a")]))
    response = client.get("/health")
    assert response.status_code == 200
    assert b"student" not in response.content and b'"s"' not in response.content


def test_open_mode_needs_no_token_and_warns_at_start(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings(store={"sqlite_path": tmp_path / "e.db"}, auth={"mode": "open"})
    with caplog.at_level(logging.WARNING, logger="hopper"):
        with TestClient(create_app(settings, clock=FrozenClock(NOW_MS), run_jobs=False)) as c:
            assert _post(c, None).status_code == 200
            with c.websocket_connect("/v1/stream/lp-events") as ws:
                assert ws.receive_json() == {"subscribed": "lp-events"}
    assert any("Auth is open" in r.getMessage() for r in caplog.records)


def test_a_token_created_while_running_works_at_once(
    client: TestClient, settings: HopperSettings
) -> None:
    first = create_token(settings.store, "ingest")
    assert _post(client, first).status_code == 200  # type: ignore[attr-defined]
    time.sleep(0.6)  # past the half-second between reloads triggered by unknown ids
    second = create_token(settings.store, "ingest")
    assert _post(client, second, make_batch(2, start=50)).status_code == 200  # type: ignore[attr-defined]
