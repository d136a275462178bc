from __future__ import annotations

from hopper.client import make_event
from hopper.events import RejectReason, decode_batch, encode_batch
from hopper.events._pb import events_pb2 as pb
from hopper.pipeline.stages import Dedup, Validate
from hopper.testing import NOW_MS, FrozenClock, page_view

DAY = 86_400_000


def _decode(*events: pb.Event):  # type: ignore[no-untyped-def]
    decoded, rejected = decode_batch(encode_batch(events))
    assert rejected == []
    return decoded


def _validate(*events: pb.Event, max_age_days: int = 30, skew_secs: int = 300):  # type: ignore[no-untyped-def]
    stage = Validate(
        FrozenClock(NOW_MS), max_event_age_secs=max_age_days * 86_400, max_clock_skew_secs=skew_secs
    )
    return stage.process(_decode(*events))


def test_valid_event_passes() -> None:
    result = _validate(page_view(1))
    assert len(result.passed) == 1
    assert result.rejected == []


def test_missing_username_device_time_and_payload_are_named() -> None:
    event = pb.Event()  # nothing set at all
    event.school_id = "s"
    result = _validate(event)
    assert [r.reason for r in result.rejected] == [RejectReason.MISSING_FIELD]
    detail = result.rejected[0].detail
    for name in ("username", "device_id", "app_time_ms", "payload"):
        assert name in detail


def test_missing_payload_alone_is_rejected() -> None:
    event = pb.Event(username="u", device_id="d", app_time_ms=NOW_MS)
    result = _validate(event)
    assert result.rejected[0].reason is RejectReason.MISSING_FIELD
    assert result.rejected[0].detail.endswith("payload")


def test_event_older_than_max_age_is_too_old() -> None:
    result = _validate(
        page_view(1, app_time_ms=NOW_MS - 31 * DAY), page_view(2, app_time_ms=NOW_MS - 29 * DAY)
    )
    assert [r.reason for r in result.rejected] == [RejectReason.TOO_OLD]
    assert [e.payload["page"] for e in result.passed] == [2]


def test_event_beyond_clock_skew_is_in_future() -> None:
    result = _validate(
        page_view(1, app_time_ms=NOW_MS + 301_000), page_view(2, app_time_ms=NOW_MS + 299_000)
    )
    assert [r.reason for r in result.rejected] == [RejectReason.IN_FUTURE]
    assert "max_clock_skew_secs=300" in result.rejected[0].detail
    assert len(result.passed) == 1


def test_age_and_skew_limits_are_configurable() -> None:
    result = _validate(page_view(1, app_time_ms=NOW_MS - 2 * DAY), max_age_days=1)
    assert result.rejected[0].reason is RejectReason.TOO_OLD
    result = _validate(page_view(1, app_time_ms=NOW_MS + 10_000), skew_secs=5)
    assert result.rejected[0].reason is RejectReason.IN_FUTURE


def test_dedup_rejects_later_copies_in_the_same_batch() -> None:
    a, b = page_view(1), page_view(2)
    result = Dedup().process(_decode(a, b, a, a))
    assert [e.index for e in result.passed] == [0, 1]
    assert [(r.index, r.reason) for r in result.rejected] == [
        (2, RejectReason.DUPLICATE),
        (3, RejectReason.DUPLICATE),
    ]


def test_events_differing_only_in_payload_are_not_duplicates() -> None:
    a = make_event("book_opened", {"book_id": "x"}, username="u", device_id="d", app_time_ms=NOW_MS)
    b = make_event("book_opened", {"book_id": "y"}, username="u", device_id="d", app_time_ms=NOW_MS)
    result = Dedup().process(_decode(a, b))
    assert len(result.passed) == 2
