"""Property tests: random and mutated bytes never crash a worker or lose good events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from hopper.config import load_settings
from hopper.edge import create_app
from hopper.events import decode_batch, encode_batch
from hopper.store import open_event_store
from hopper.testing import NOW_MS, FrozenClock, bearer, create_token, page_view

PROTOBUF = {"content-type": "application/x-protobuf"}
_counter = iter(range(10**9))


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    path = tmp_path_factory.mktemp("fuzz") / "events.db"
    settings = load_settings(store={"sqlite_path": path})  # auth on: tokens, as by default
    app = create_app(settings, clock=FrozenClock(NOW_MS), run_jobs=False)
    with TestClient(app, headers=bearer(create_token(settings.store))) as client:
        yield client, path


def _error_rows(path: Path) -> int:
    store = open_event_store(load_settings(store={"sqlite_path": path}).store)
    try:
        return store.count("reader_events_errors")
    finally:
        store.close()


@given(st.binary(max_size=2048))
@settings(max_examples=300, deadline=None)
def test_decoder_never_raises_on_random_bytes(data: bytes) -> None:
    events, rejected = decode_batch(data)
    assert all(e.raw for e in events) or events == []
    assert all(r.reason.value == "undecodable" for r in rejected)


@given(st.binary(max_size=600), st.integers(min_value=0, max_value=599), st.integers(0, 255))
@settings(max_examples=300, deadline=None)
def test_decoder_survives_truncation_and_bit_flips(tail: bytes, cut: int, flip: int) -> None:
    payload = bytearray(encode_batch([page_view(n) for n in range(5)]) + tail)
    payload = payload[: max(1, cut)] if cut < len(payload) else payload
    payload[len(payload) // 2] ^= flip
    events, rejected = decode_batch(bytes(payload))
    # Every event index appears at most once, as an event or as a rejection.
    indexes = [e.index for e in events] + [r.index for r in rejected if r.index >= 0]
    assert len(indexes) == len(set(indexes))


entries = st.lists(
    st.one_of(st.just("good"), st.binary(min_size=1, max_size=64)), min_size=0, max_size=30
)


@given(entries)
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_post_mixed_batches_stores_every_good_event_and_records_every_bad_one(
    edge: tuple[TestClient, Path], items: list[object]
) -> None:
    client, path = edge
    raws: list[bytes] = []
    good: set[int] = set()
    for index, item in enumerate(items):
        if item == "good":
            raws.append(page_view(next(_counter)).SerializeToString())
            good.add(index)
        else:
            assert isinstance(item, bytes)
            raws.append(item)
    before = _error_rows(path)
    response = client.post("/v1/events", content=encode_batch(raws), headers=PROTOBUF)
    assert response.status_code == 200
    body = response.json()
    rejected_indexes = {r["index"] for r in body["results"]}
    assert not rejected_indexes & good
    assert body["accepted"] >= len(good)
    assert body["accepted"] + body["duplicates"] + body["rejected"] == len(raws)
    assert _error_rows(path) - before == body["rejected"]


@given(st.binary(max_size=4096))
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_post_random_bodies_never_5xx_and_are_recorded(
    edge: tuple[TestClient, Path], body: bytes
) -> None:
    client, path = edge
    before = _error_rows(path)
    response = client.post("/v1/events", content=body, headers=PROTOBUF)
    assert response.status_code in (200, 400)
    answer = response.json()
    assert _error_rows(path) - before == answer["rejected"]
    if response.status_code == 400:
        assert answer["results"][0]["index"] == -1
