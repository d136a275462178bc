"""Learning-path progress: per student, path, step and day (an_lp_step_days), per path.

An ``lp_step_completed`` event is an attempt at a step; it fails when its score is below
``lp_pass_score``. A step is *done* once it has been completed at all, *passed* once an
attempt scored at least ``lp_pass_score``. A path's score is the mean of its done steps'
best scores; it is complete when every step that ``ec_lp_steps`` lists for it is done, at
the time the last of them was first done. A path missing from ``ec_lp_steps`` has no step
count, progress or completion (NULL).
"""

from __future__ import annotations

from hopper.edge.processing.db import Params, ProcessingDb
from hopper.edge.processing.reading import replace_days

_STEP_DAYS = """
SELECT e.username, e.lp_id, e.step_id, c.day, COUNT(*) AS attempts,
       SUM(CASE WHEN e.score < :lp_pass_score THEN 1 ELSE 0 END) AS failed_attempts,
       MAX(e.score) AS best_score, MIN(e.app_time_ms) AS first_ms,
       MIN(CASE WHEN e.score >= :lp_pass_score THEN e.app_time_ms END) AS first_passed_ms,
       MAX(e.app_time_ms) AS last_ms
FROM tmp_ev e JOIN tmp_calendar c ON c.day_no = e.day_no
WHERE e.event_type = 'lp_step_completed'
GROUP BY e.username, e.lp_id, e.step_id, c.day
"""

_TOUCHED_PATHS = """
SELECT DISTINCT e.username, e.lp_id FROM tmp_ev e WHERE e.event_type = 'lp_step_completed'
"""

STEP_DAY_COLUMNS = (
    "username, lp_id, step_id, day, attempts, failed_attempts, best_score, first_ms, "
    "first_passed_ms, last_ms"
)

# One row per (student, path, step) over all days: the step's totals.
STEPS = """
SELECT a.username, a.lp_id, a.step_id, SUM(a.attempts) AS attempts,
       SUM(a.failed_attempts) AS failed_attempts, MAX(a.best_score) AS best_score,
       MIN(a.first_ms) AS first_ms, MIN(a.first_passed_ms) AS first_passed_ms,
       MAX(a.last_ms) AS last_ms
FROM an_lp_step_days a {where}
GROUP BY a.username, a.lp_id, a.step_id
"""

_PATHS = f"""
SELECT st.username, st.lp_id, n.steps_total,
       COUNT(*) AS steps_done,
       SUM(CASE WHEN st.best_score >= :lp_pass_score THEN 1 ELSE 0 END) AS steps_passed,
       SUM(st.attempts) AS attempts, SUM(st.failed_attempts) AS failed_attempts,
       SUM(st.best_score) / COUNT(*) AS score,
       CASE WHEN n.steps_total > 0
            THEN CAST(COUNT(ps.step_id) AS DOUBLE PRECISION) / n.steps_total END AS progress,
       CASE WHEN n.steps_total > 0 AND COUNT(ps.step_id) >= n.steps_total
            THEN MAX(CASE WHEN ps.step_id IS NOT NULL THEN st.first_ms END) END AS completed_ms,
       MIN(st.first_ms) AS first_ms, MAX(st.last_ms) AS last_ms, :run_id AS run_id
FROM ({STEPS}) st
LEFT JOIN (SELECT lp_id, COUNT(*) AS steps_total FROM ec_lp_steps GROUP BY lp_id) n
       ON n.lp_id = st.lp_id
LEFT JOIN ec_lp_steps ps ON ps.lp_id = st.lp_id AND ps.step_id = st.step_id
GROUP BY st.username, st.lp_id, n.steps_total
"""  # noqa: S608 - fixed text

PATH_COLUMNS = (
    "username, lp_id, steps_total, steps_done, steps_passed, attempts, failed_attempts, "
    "score, progress, completed_ms, first_ms, last_ms, run_id"
)


def compute_learning_paths(db: ProcessingDb, params: Params) -> None:
    """Create ``tmp_out_lp_step_days`` and ``tmp_touched_paths`` from ``tmp_ev``."""
    db.create_temp("tmp_out_lp_step_days", _STEP_DAYS, params)
    db.create_temp("tmp_touched_paths", _TOUCHED_PATHS, joined=True)


def apply_learning_paths(db: ProcessingDb, params: Params, *, every_path: bool) -> None:
    """Replace the recomputed step days, then recompute the touched paths (or all)."""
    replace_days(db, "an_lp_step_days")
    db.execute(
        f"INSERT INTO an_lp_step_days ({STEP_DAY_COLUMNS}, run_id) "  # noqa: S608
        f"SELECT {STEP_DAY_COLUMNS}, :run_id FROM tmp_out_lp_step_days",
        params,
    )
    if every_path:
        db.execute("DELETE FROM an_learning_paths")
        where = ""
    else:
        db.execute(
            "DELETE FROM an_learning_paths WHERE (username, lp_id) IN "
            "(SELECT username, lp_id FROM tmp_touched_paths)"
        )
        where = "WHERE (a.username, a.lp_id) IN (SELECT username, lp_id FROM tmp_touched_paths)"
    db.execute(
        f"INSERT INTO an_learning_paths ({PATH_COLUMNS}) "  # noqa: S608
        + _PATHS.format(where=where),
        params,
    )
