"""The kept reports: bounded by bytes, one data version, one school day."""

from __future__ import annotations

from hopper.edge.api.reports import Report, ReportCache

NOW = 1_790_000_000_000


def test_kept_reports_are_bounded_by_bytes_and_end_with_the_schools_day() -> None:
    cache = ReportCache(max_bytes=4000)
    body = Report.of({"pad": "x" * 900})
    for n in range(10):
        cache.put(("school", f"s{n}", 30), body, (1, 0, 0), until_ms=NOW + 1000)
    assert cache.size_bytes <= 4000
    assert cache.get(("school", "s0", 30), (1, 0, 0), NOW) is None  # the oldest went first
    assert cache.get(("school", "s9", 30), (1, 0, 0), NOW) == body
    assert cache.get(("school", "s9", 30), (2, 0, 0), NOW) is None  # a newer version of data
    assert cache.get(("school", "s9", 30), (1, 0, 0), NOW + 1000) is None  # a new day
    cache.put(("school", "big", 30), Report.of({"pad": "x" * 2000}), (1, 0, 0), NOW + 1000)
    assert cache.get(("school", "big", 30), (1, 0, 0), NOW) is None  # too big to keep
