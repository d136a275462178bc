"""Local days in each school's time zone, as small tables the SQL joins to.

SQLite has no time zones, so the SQL never converts a time itself: it joins each event to
``tmp_tz`` (per zone, the periods of constant UTC offset) and takes
``(app_time_ms + offset_ms) / 86400000``, the local day number (days since 1970-01-01 in
that zone). ``tmp_calendar`` names each day number (``YYYY-MM-DD``) and ``tmp_today``
holds, per zone, today and the day boundaries the rules need. All three are built here
with ``zoneinfo`` for the span of time a run touches.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hopper.edge.processing.db import ProcessingDb

logger = logging.getLogger(__name__)

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
# UTC offsets lie within -12 h and +14 h: a local day lies within its UTC day widened by this.
MAX_OFFSET_MS = 14 * HOUR_MS
FOREVER_MS = 2**62
EPOCH = date(1970, 1, 1)
DEFAULT_ZONE = "UTC"


@functools.cache
def zone(name: str) -> tzinfo:
    """Return the zone of an IANA name; UTC for an empty or (with a warning) unknown one."""
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        logger.warning("Unknown time zone %r in ec_schools; using UTC for it.", name)
        return UTC


def _offset_ms(tz: tzinfo, at_ms: int) -> int:
    offset = datetime.fromtimestamp(at_ms / 1000, tz=tz).utcoffset()
    return 0 if offset is None else int(offset.total_seconds() * 1000)


def offset_periods(tz: tzinfo, start_ms: int, end_ms: int) -> list[tuple[int, int, int]]:
    """Return ``(from_ms, to_ms, offset_ms)`` periods covering all time, exact in [start, end].

    Offsets are sampled hourly and each change is found to the millisecond by bisection;
    the first and last periods extend to the ends of time.
    """
    periods: list[tuple[int, int, int]] = []
    current = _offset_ms(tz, start_ms)
    period_start = -FOREVER_MS
    t = start_ms
    while t < end_ms:
        step = min(t + HOUR_MS, end_ms)
        if _offset_ms(tz, step) != current:
            lo, hi = t, step  # the offset at lo is current, at hi it is not
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset_ms(tz, mid) == current:
                    lo = mid
                else:
                    hi = mid
            periods.append((period_start, hi, current))
            period_start, current = hi, _offset_ms(tz, hi)
        t = step
    periods.append((period_start, FOREVER_MS, current))
    return periods


def day_no(day: date) -> int:
    """Return a date's day number (days since 1970-01-01)."""
    return (day - EPOCH).days


def day_of(day_number: int) -> date:
    """Return the date of a day number."""
    return EPOCH + timedelta(days=day_number)


def local_midnight_ms(tz: tzinfo, day: date) -> int:
    """Return the UTC time (ms) at which ``day`` begins in ``tz``."""
    return int(datetime.combine(day, time(0), tzinfo=tz).timestamp() * 1000)


@dataclass(frozen=True)
class Today:
    """What "today" means in one zone at the run's clock."""

    time_zone: str
    today_no: int
    today_end_ms: int  # when tomorrow begins
    tomorrow_end_ms: int
    reading_cutoff_no: int  # the earliest of the last N school days before today
    lookback_no: int  # the first day of the needs-help look-back


def today_in(
    name: str,
    now_ms: int,
    *,
    school_weekdays: Sequence[int],
    school_days: int,
    lookback_days: int,
) -> Today:
    """Compute today and its boundaries in one zone."""
    tz = zone(name)
    today = datetime.fromtimestamp(now_ms / 1000, tz=tz).date()
    cutoff = today
    counted = 0
    while counted < school_days:
        cutoff -= timedelta(days=1)
        if cutoff.isoweekday() in school_weekdays:
            counted += 1
    return Today(
        name,
        day_no(today),
        local_midnight_ms(tz, today + timedelta(days=1)),
        local_midnight_ms(tz, today + timedelta(days=2)),
        day_no(cutoff),
        day_no(today) - lookback_days,
    )


def fill_time_tables(
    db: ProcessingDb,
    zones: Iterable[str],
    start_ms: int,
    end_ms: int,
    todays: Sequence[Today],
) -> None:
    """Create ``tmp_tz``, ``tmp_calendar`` and ``tmp_today`` for the zones and the span."""
    start_ms -= 2 * DAY_MS
    end_ms += 3 * DAY_MS
    db.create_temp_table(
        "tmp_tz",
        "time_zone TEXT NOT NULL, from_ms BIGINT NOT NULL, to_ms BIGINT NOT NULL, "
        "offset_ms BIGINT NOT NULL",
    )
    rows = [
        (name, *period)
        for name in sorted(set(zones) | {DEFAULT_ZONE})
        for period in offset_periods(zone(name), start_ms, end_ms)
    ]
    db.insert_rows("tmp_tz", ("time_zone", "from_ms", "to_ms", "offset_ms"), rows)
    db.analyze("tmp_tz")
    db.create_temp_table(
        "tmp_calendar", "day_no BIGINT PRIMARY KEY, day TEXT NOT NULL, weekday INTEGER NOT NULL"
    )
    first = min([start_ms // DAY_MS - 1, *(t.lookback_no for t in todays)])
    last = max([end_ms // DAY_MS + 1, *(t.today_no + 2 for t in todays)])
    days = [(n, day_of(n).isoformat(), day_of(n).isoweekday()) for n in range(first, last + 1)]
    db.insert_rows("tmp_calendar", ("day_no", "day", "weekday"), days)
    db.analyze("tmp_calendar")
    db.create_temp_table(
        "tmp_today",
        "time_zone TEXT PRIMARY KEY, today_no BIGINT NOT NULL, today_end_ms BIGINT NOT NULL, "
        "tomorrow_end_ms BIGINT NOT NULL, reading_cutoff_no BIGINT NOT NULL, "
        "lookback_no BIGINT NOT NULL",
    )
    db.insert_rows(
        "tmp_today",
        (
            "time_zone",
            "today_no",
            "today_end_ms",
            "tomorrow_end_ms",
            "reading_cutoff_no",
            "lookback_no",
        ),
        [
            (
                t.time_zone,
                t.today_no,
                t.today_end_ms,
                t.tomorrow_end_ms,
                t.reading_cutoff_no,
                t.lookback_no,
            )
            for t in todays
        ],
    )
