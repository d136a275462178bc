"""The "needs help" flags (an_needs_help): documented rules over the derived tables.

Recomputed whole at every run that changes anything, as of the run's day in each
student's time zone, for students with an event in the last ``help_lookback_days``:

``failed_step``    a learning-path step failed more than ``help_max_failed_attempts``
                   times and never passed (Kolibri flags more than 3 wrong answers)
``no_reading``     no page read on the last ``help_no_reading_school_days`` school days
                   before today (``school_weekdays``; holidays are not known)
``low_retention``  a deck whose retention (reviews of cards in Review state) is below
                   ``help_min_retention`` once it has ``help_min_retention_reviews``
"""

from __future__ import annotations

from hopper.edge.processing.db import Params, ProcessingDb
from hopper.edge.processing.learning_paths import STEPS

# Students in the look-back, with their today (as_of_day) and the rules' day boundaries.
_RECENT = """
SELECT st.username, today.day AS as_of_day, t.today_no, cut.day AS reading_cutoff_day
FROM an_students st
JOIN tmp_today t ON t.time_zone = st.time_zone
JOIN tmp_calendar today ON today.day_no = t.today_no
JOIN tmp_calendar back ON back.day_no = t.lookback_no
JOIN tmp_calendar cut ON cut.day_no = t.reading_cutoff_no
WHERE st.last_day >= back.day
"""

_FAILED_STEP = f"""
SELECT s.username, 'failed_step', s.lp_id || '/' || s.step_id,
       CAST(s.failed_attempts AS DOUBLE PRECISION), :help_max_failed_attempts,
       'failed ' || CAST(s.failed_attempts AS TEXT) || ' times, never passed',
       r.as_of_day, :run_id
FROM ({STEPS.format(where="")}) s
JOIN tmp_recent r ON r.username = s.username
WHERE s.failed_attempts > :help_max_failed_attempts AND s.first_passed_ms IS NULL
"""  # noqa: S608 - fixed text

_NO_READING = """
SELECT r.username, 'no_reading', '',
       CAST(r.today_no - lr.day_no AS DOUBLE PRECISION), :help_no_reading_school_days,
       CASE WHEN lr.day_no IS NULL THEN 'never read'
            ELSE 'last read on ' || st.last_reading_day END,
       r.as_of_day, :run_id
FROM tmp_recent r
JOIN an_students st ON st.username = r.username
LEFT JOIN (SELECT d.username, MAX(d.day_no) AS day_no FROM an_student_days d
           WHERE d.reading_ms > 0 GROUP BY d.username) lr ON lr.username = r.username
WHERE st.last_reading_day IS NULL OR st.last_reading_day < r.reading_cutoff_day
"""

_LOW_RETENTION = """
SELECT d.username, 'low_retention', d.deck_id, d.retention, :help_min_retention,
       CAST(d.retention_passes AS TEXT) || ' of ' || CAST(d.retention_reviews AS TEXT)
         || ' reviews of cards in review passed',
       r.as_of_day, :run_id
FROM an_flashcard_decks d
JOIN tmp_recent r ON r.username = d.username
WHERE d.retention_reviews >= :help_min_retention_reviews AND d.retention < :help_min_retention
"""

_COLUMNS = "username, rule, subject, value, threshold, detail, as_of_day, run_id"


def flag_students(db: ProcessingDb, params: Params) -> int:
    """Recompute an_needs_help from the other tables; return the number of flags."""
    db.create_temp("tmp_recent", _RECENT, joined=True)
    db.execute("DELETE FROM an_needs_help")
    for rule in (_FAILED_STEP, _NO_READING, _LOW_RETENTION):
        db.execute(f"INSERT INTO an_needs_help ({_COLUMNS}) {rule}", params)  # noqa: S608
    rows = db.query("SELECT count(*) FROM an_needs_help")
    return int(rows[0][0])
