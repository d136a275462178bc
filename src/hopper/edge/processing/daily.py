"""Per student and local day (an_student_days), and per student (an_students): streaks.

A day is *active* when the student did something in a book, a deck or a path that day
(``page_viewed``, ``book_opened``, ``book_closed``, ``resource_opened``,
``flashcard_reviewed``, ``lp_step_completed``); app session starts and ends alone do not
make a day active. Streaks are runs of consecutive active days; the current streak is the
run that ends today or yesterday in the student's time zone (a day still in progress does
not break a streak), else 0.
"""

from __future__ import annotations

from hopper.edge.processing.db import Params, ProcessingDb
from hopper.edge.processing.reading import replace_days

# A day's figures add up its sessions', but for the distinct pages and books read, which
# come from its page days (one row per page read that day).
_DAYS = """
SELECT s.username, s.day, s.day_no, MIN(s.school_id) AS school_id,
       MIN(s.start_ms) AS first_ms, MAX(s.end_ms) AS last_ms, COUNT(*) AS sessions,
       SUM(s.active_ms) AS active_ms, SUM(s.page_views) AS page_views,
       COALESCE(MAX(p.pages_read), 0) AS pages_read, COALESCE(MAX(p.books_read), 0) AS books_read,
       SUM(s.reading_ms) AS reading_ms, SUM(s.flashcard_reviews) AS flashcard_reviews,
       SUM(s.lp_steps) AS lp_steps, SUM(s.resources_opened) AS resources_opened,
       MAX(s.is_active) AS is_active
FROM tmp_out_sessions s
LEFT JOIN (
  SELECT d.username, d.day, COUNT(*) AS pages_read, COUNT(DISTINCT d.book_id) AS books_read
  FROM tmp_out_page_days d WHERE d.reading_ms > 0 AND d.page > 0
  GROUP BY d.username, d.day
) p ON p.username = s.username AND p.day = s.day
GROUP BY s.username, s.day, s.day_no
"""

DAY_COLUMNS = (
    "username, day, day_no, school_id, first_ms, last_ms, sessions, active_ms, page_views, "
    "pages_read, books_read, reading_ms, flashcard_reviews, lp_steps, resources_opened, "
    "is_active"
)


def compute_days(db: ProcessingDb) -> None:
    """Create ``tmp_out_days``: the new an_student_days rows (from the sessions, page days)."""
    db.create_temp("tmp_out_days", _DAYS)


def apply_days(db: ProcessingDb, params: Params) -> None:
    """Replace the recomputed an_student_days rows (inside the write transaction)."""
    replace_days(db, "an_student_days")
    db.execute(
        f"INSERT INTO an_student_days ({DAY_COLUMNS}, run_id) "  # noqa: S608
        f"SELECT {DAY_COLUMNS}, :run_id FROM tmp_out_days",
        params,
    )


# Each student's zone: that of the school of their latest day, UTC when it is unknown.
_STUDENT_ZONES = """
SELECT x.username, x.school_id, COALESCE(NULLIF(s.time_zone, ''), 'UTC') AS time_zone
FROM (
  SELECT d.username, d.school_id,
         ROW_NUMBER() OVER (PARTITION BY d.username ORDER BY d.day_no DESC) AS recency
  FROM an_student_days d
) x
LEFT JOIN ec_schools s ON s.school_id = x.school_id
WHERE x.recency = 1
"""

# Islands of consecutive active days: day_no - row number is constant along a run.
_STREAKS = """
SELECT i.username, MAX(i.length) AS longest_streak,
       MAX(CASE WHEN i.last_no >= t.today_no - 1 THEN i.length ELSE 0 END) AS current_streak
FROM (
  SELECT r.username, r.island, COUNT(*) AS length, MAX(r.day_no) AS last_no
  FROM (
    SELECT d.username, d.day_no,
           d.day_no - ROW_NUMBER() OVER (PARTITION BY d.username ORDER BY d.day_no) AS island
    FROM an_student_days d WHERE d.is_active = 1
  ) r
  GROUP BY r.username, r.island
) i
JOIN tmp_student_zone z ON z.username = i.username
JOIN tmp_today t ON t.time_zone = z.time_zone
GROUP BY i.username
"""

_STUDENTS = f"""
SELECT d.username, z.school_id, z.time_zone, MIN(d.day) AS first_day, MAX(d.day) AS last_day,
       MAX(CASE WHEN d.is_active = 1 THEN d.day END) AS last_active_day,
       MAX(CASE WHEN d.reading_ms > 0 THEN d.day END) AS last_reading_day,
       SUM(d.is_active) AS active_days,
       COALESCE(MAX(k.current_streak), 0) AS current_streak,
       COALESCE(MAX(k.longest_streak), 0) AS longest_streak,
       SUM(d.reading_ms) AS reading_ms, SUM(d.active_ms) AS active_ms,
       c.day AS as_of_day, :run_id AS run_id
FROM an_student_days d
JOIN tmp_student_zone z ON z.username = d.username
JOIN tmp_today t ON t.time_zone = z.time_zone
JOIN tmp_calendar c ON c.day_no = t.today_no
LEFT JOIN ({_STREAKS}) k ON k.username = d.username
GROUP BY d.username, z.school_id, z.time_zone, c.day
"""  # noqa: S608 - fixed text

STUDENT_COLUMNS = (
    "username, school_id, time_zone, first_day, last_day, last_active_day, last_reading_day, "
    "active_days, current_streak, longest_streak, reading_ms, active_ms, as_of_day, run_id"
)


def roll_up_students(db: ProcessingDb, params: Params) -> None:
    """Recompute an_students (every student: streaks depend on today) and their zones."""
    db.create_temp("tmp_student_zone", _STUDENT_ZONES, joined=True)
    db.execute("DELETE FROM an_students")
    db.execute(f"INSERT INTO an_students ({STUDENT_COLUMNS}) {_STUDENTS}", params)  # noqa: S608
