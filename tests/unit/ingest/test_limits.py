"""Whatever one request holds, memory, answer size, work and rows written stay bounded."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from hopper.config import HopperSettings
from hopper.edge import create_app
from hopper.events import content_hash, encode_batch
from hopper.events._pb import events_pb2 as pb
from hopper.store import StoredError, open_event_store
from hopper.testing import NOW_MS, FrozenClock, bearer, make_batch

PROTOBUF = {"content-type": "application/x-protobuf"}
EMPTY_EVENT = b"\x0a\x00"  # field 1, length 0: an Event with nothing set


@pytest.fixture
def client(settings: HopperSettings, token: str) -> Iterator[TestClient]:
    app = create_app(settings, clock=FrozenClock(NOW_MS), run_jobs=False)
    with TestClient(app, headers=bearer(token)) as c:
        yield c


def _errors(settings: HopperSettings, limit: int = 10) -> tuple[int, list[StoredError]]:
    store = open_event_store(settings.store)
    try:
        return store.count("reader_events_errors"), store.errors(limit)
    finally:
        store.close()


def _reset_peak_rss() -> None:
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")


def test_a_million_empty_events_are_refused_whole_and_cheaply(
    client: TestClient, settings: HopperSettings
) -> None:
    body = EMPTY_EVENT * 1_000_000  # 2 MB: once made 4.7 GB of RSS and 1M error rows
    _reset_peak_rss()
    before = _rss_kib("VmRSS")
    response = client.post("/v1/events", content=body, headers=PROTOBUF)
    peak_growth_mib = (_rss_kib("VmHWM") - before) / 1024
    assert response.status_code == 400
    answer = response.json()
    assert answer["reasons"] == {"too_many_events": 1}
    assert "max_batch_events=5000" in answer["results"][0]["detail"]
    assert len(response.content) < 2048
    count, (row,) = _errors(settings)
    assert count == 1
    assert len(row.raw) == settings.ingest.error_raw_max_bytes
    assert (row.raw_size, row.raw_hash) == (len(body), content_hash(body))
    # The body itself, its copy in the queue and upb's count of 1M entries: tens of MiB.
    assert peak_growth_mib < 150, f"peak RSS grew {peak_growth_mib:.0f} MiB"


def test_a_full_batch_of_bad_events_gets_a_bounded_answer_with_complete_counts(
    client: TestClient, settings: HopperSettings
) -> None:
    limit = settings.ingest.max_batch_events
    response = client.post("/v1/events", content=EMPTY_EVENT * limit, headers=PROTOBUF)
    assert response.status_code == 200
    answer = response.json()
    assert answer["rejected"] == limit
    assert answer["reasons"] == {"missing_field": limit}
    assert len(answer["results"]) == settings.ingest.ack_max_results
    assert answer["results_truncated"] is True
    assert len(response.content) < 20_000
    count, _ = _errors(settings)
    assert count == limit  # every rejection is recorded, none silently dropped


def test_fields_that_are_not_events_are_recorded_not_silently_dropped(
    client: TestClient, settings: HopperSettings
) -> None:
    response = client.post("/v1/events", content=b"\x08\x01", headers=PROTOBUF)
    assert response.status_code == 400
    assert response.json()["reasons"] == {"undecodable": 1}
    count, (row,) = _errors(settings)
    assert count == 1 and row.raw == b"\x08\x01" and row.reason == "undecodable"


def test_good_events_beside_unknown_fields_are_stored(
    client: TestClient, settings: HopperSettings
) -> None:
    response = client.post("/v1/events", content=make_batch(3) + b"\x10\x07", headers=PROTOBUF)
    assert response.status_code == 200
    answer = response.json()
    assert (answer["accepted"], answer["reasons"]) == (3, {"undecodable": 1})
    assert answer["results"][0]["index"] == -1


def test_an_undecodable_body_keeps_only_a_prefix_its_size_and_hash(
    client: TestClient, settings: HopperSettings
) -> None:
    garbage = b"\xff" * 100_000  # once stored whole: anyone could fill the disk
    assert client.post("/v1/events", content=garbage, headers=PROTOBUF).status_code == 400
    _, (row,) = _errors(settings)
    assert row.raw == garbage[: settings.ingest.error_raw_max_bytes]
    assert (row.raw_size, row.raw_hash) == (100_000, content_hash(garbage))


def test_a_large_bad_event_keeps_only_a_prefix(
    client: TestClient, settings: HopperSettings
) -> None:
    huge = pb.Event(username="u" * 50_000, device_id="d", app_time_ms=NOW_MS)  # no payload
    raw = huge.SerializeToString()
    response = client.post("/v1/events", content=encode_batch([raw]), headers=PROTOBUF)
    assert response.json()["reasons"] == {"missing_field": 1}
    _, (row,) = _errors(settings)
    assert len(row.raw) == settings.ingest.error_raw_max_bytes
    assert (row.raw_size, row.raw_hash) == (len(raw), content_hash(raw))


def test_a_too_large_body_records_its_size_and_hash(
    client: TestClient, settings: HopperSettings
) -> None:
    body = b"\x01" * (settings.ingest.max_body_bytes + 10)
    response = client.post("/v1/events", content=body, headers=PROTOBUF)
    assert response.status_code == 413
    _, (row,) = _errors(settings)
    assert row.reason == "too_large"
    assert len(row.raw) == settings.ingest.error_raw_max_bytes
    assert (row.raw_size, row.raw_hash) == (len(body), content_hash(body))


def test_a_too_large_websocket_frame_is_cut_before_it_is_queued(
    client: TestClient, settings: HopperSettings
) -> None:
    frame = b"\x01" * (settings.ingest.max_body_bytes + 1)
    with client.websocket_connect("/v1/events/ws") as ws:
        ws.send_bytes(frame)
        ack = ws.receive_json()
    assert ack["reasons"] == {"too_large": 1}
    _, (row,) = _errors(settings)
    assert (row.raw_size, row.raw_hash) == (len(frame), content_hash(frame))
