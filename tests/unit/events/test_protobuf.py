from __future__ import annotations

from hopper.events import RejectReason, content_hash, decode_batch, encode_batch
from hopper.events.protobuf import EVENT_TYPES
from hopper.testing import make_batch, page_view


def test_decode_keeps_each_events_exact_raw_bytes() -> None:
    events = [page_view(n) for n in range(3)]
    decoded, rejected = decode_batch(encode_batch(events))
    assert rejected == []
    assert [e.raw for e in decoded] == [e.SerializeToString() for e in events]
    assert [e.hash for e in decoded] == [content_hash(e.SerializeToString()) for e in events]


def test_decode_parses_envelope_and_payload() -> None:
    (event,), _ = decode_batch(encode_batch([page_view(7, duration_ms=4200)]))
    assert event.username == "student0001"
    assert event.device_id == "tablet-0001"
    assert event.school_id == "school-001"
    assert event.event_type == "page_viewed"
    assert event.payload == {"book_id": "book-001", "page": 7, "duration_ms": 4200}


def test_every_event_type_of_the_schema_is_known() -> None:
    assert set(EVENT_TYPES) == {
        "app_session_started",
        "app_session_ended",
        "book_opened",
        "book_closed",
        "page_viewed",
        "resource_opened",
        "lp_step_completed",
        "flashcard_reviewed",
        "cam_status",
    }


def test_garbage_bytes_are_one_undecodable_rejection_for_the_whole_payload() -> None:
    events, rejected = decode_batch(b"\xff\xfe garbage")
    assert events == []
    assert [(r.index, r.reason) for r in rejected] == [(-1, RejectReason.UNDECODABLE)]
    assert rejected[0].raw == b"\xff\xfe garbage"


def test_truncated_batch_is_undecodable() -> None:
    payload = make_batch(5)
    events, rejected = decode_batch(payload[:-3])
    assert events == []
    assert rejected[0].reason is RejectReason.UNDECODABLE


def test_one_corrupt_event_does_not_lose_its_neighbours() -> None:
    good = [page_view(n).SerializeToString() for n in range(3)]
    payload = encode_batch([good[0], b"\x0a\xff\xff", good[1], good[2]])
    events, rejected = decode_batch(payload)
    assert [e.index for e in events] == [0, 2, 3]
    assert [(r.index, r.reason) for r in rejected] == [(1, RejectReason.UNDECODABLE)]
    assert rejected[0].raw == b"\x0a\xff\xff"


def test_empty_batch_has_no_events_and_no_rejections() -> None:
    assert decode_batch(b"") == ([], [])


def test_float_scores_lose_float32_noise() -> None:
    from hopper.client import make_event

    event = make_event(
        "lp_step_completed",
        {"lp_id": "lp", "step_id": "s", "score": 0.8},
        username="u",
        device_id="d",
        app_time_ms=1,
    )
    (decoded,), _ = decode_batch(encode_batch([event]))
    assert decoded.payload["score"] == 0.8
