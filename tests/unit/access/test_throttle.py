"""LoginThrottle: failures counted per username and per address, in bounded memory."""

from __future__ import annotations

from hopper.access import LoginThrottle

MIN = 60_000


def _throttle(**kwargs: int) -> LoginThrottle:
    limits = {"window_ms": 15 * MIN, "max_per_user": 3, "max_per_address": 5, "max_entries": 100}
    return LoginThrottle(**{**limits, **kwargs})


def test_a_username_is_refused_after_its_failures_until_the_window_passes() -> None:
    throttle = _throttle()
    for n in range(3):
        assert throttle.retry_after_secs("Anna", f"10.0.0.{n}", n * MIN) == 0
        throttle.failed("Anna", f"10.0.0.{n}", n * MIN)
    assert throttle.retry_after_secs("anna", "10.0.0.9", 3 * MIN) == 12 * 60
    assert throttle.retry_after_secs("anna", "10.0.0.9", 15 * MIN + 1) == 0


def test_an_address_is_refused_after_failures_on_many_usernames() -> None:
    throttle = _throttle()
    for n in range(5):
        throttle.failed(f"user{n}", "10.0.0.1", 0)
    assert throttle.retry_after_secs("someone", "10.0.0.1", 1) > 0
    assert throttle.retry_after_secs("someone", "10.0.0.2", 1) == 0


def test_a_success_clears_the_username_and_memory_stays_bounded() -> None:
    throttle = _throttle(max_entries=50)
    throttle.failed("anna", "a", 0)
    throttle.failed("anna", "a", 0)
    throttle.succeeded("anna")
    throttle.failed("anna", "a", 0)
    assert throttle.retry_after_secs("anna", "b", 1) == 0
    for n in range(10_000):
        throttle.failed(f"made-up-{n}", f"addr-{n}", n)
    assert throttle.size <= 50
