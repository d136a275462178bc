"""Events of the (student, day) groups a run recomputes, their sessions and page times.

Everything here is set-based SQL over temporary tables, one text for SQLite and PostgreSQL:

    tmp_ev        the events of every recomputed (student, local day), cam_status left out,
                  numbered ``rn`` 1, 2... in (username, day, app_time_ms, id) order within
                  each day: an event's next one in its day is row ``rn + 1`` if that has
                  the same student and day. A day no earlier run saw takes its events from
                  the new rows (one range of the primary key); the others, through the
                  (username, app_time_ms) index
    tmp_timed     the same rows with what the next one tells (session end, counted page
                  time, end reason) and the session key (the running count of session
                  ends, one window function in ``rn`` order), in one statement: the
                  sessions and page days then group one table. Narrow side tables joined
                  back to ``tmp_ev`` cost PostgreSQL 93 s of a 10M full run, against 28 s
                  so. (``LEAD()`` instead of the join on ``rn + 1``: PostgreSQL 20 s, but
                  SQLite 43 s against 15 s, as its window carries every column along.)
    tmp_out_*     the new rows of an_sessions, an_page_days (here), an_student_days and
                  an_lp_step_days (daily.py, learning_paths.py)

Definitions (docs/analytics.md): a student's events of one local day, ordered by
``(app_time_ms, id)``, form sessions; an event ends its session when it is the day's last,
is an ``app_session_ended``, is followed by an ``app_session_started``, or the next event
comes more than ``session_gap_secs`` later. A page's time is the gap to the next event of
its session, or, for a session's last event, the page's own ``duration_ms``; under
``page_min_secs`` it counts 0 (not read), above ``page_max_secs`` it counts that maximum.
"""

from __future__ import annotations

from hopper.edge.processing.db import Params, ProcessingDb

# The local day of an event: its school's zone (ec_schools), UTC when the school is unknown.
ZONE_JOIN = """
LEFT JOIN ec_schools s ON s.school_id = e.school_id
JOIN tmp_tz z ON z.time_zone = COALESCE(NULLIF(s.time_zone, ''), 'UTC')
             AND z.from_ms <= e.app_time_ms AND e.app_time_ms < z.to_ms
"""
LOCAL_DAY = "(e.app_time_ms + z.offset_ms) / 86400000"

EVENT_COLUMNS = (
    "id, username, day_no, app_time_ms, school_id, event_type, book_id, page, duration_ms, "
    "lp_id, step_id, score"
)
# ``username || ''``: an expression, so that no planner reads the whole table through the
# (username, app_time_ms) index to save part of the sort below (random reads: much slower).
_EVENT_VALUES = f"""
e.id, e.username || '' AS username, {LOCAL_DAY} AS day_no, e.app_time_ms, e.school_id,
e.event_type, e.book_id, e.page,
CASE WHEN e.event_type = 'page_viewed'
     THEN CAST(e.payload ->> 'duration_ms' AS BIGINT) END AS duration_ms,
CASE WHEN e.event_type = 'lp_step_completed' THEN e.payload ->> 'lp_id' END AS lp_id,
CASE WHEN e.event_type = 'lp_step_completed' THEN e.payload ->> 'step_id' END AS step_id,
CASE WHEN e.event_type = 'lp_step_completed'
     THEN CAST(e.payload ->> 'score' AS DOUBLE PRECISION) END AS score
"""  # noqa: S608 - fixed text
_IN_ORDER = "ORDER BY x.username, x.day_no, x.app_time_ms, x.id"

# Incremental: the new rows (a range of the primary key), then the (student, day) groups
# they touch. Two steps, so that no planner can prefer walking the username index instead.
_NEW_ROWS = """
SELECT e.id, e.username, e.app_time_ms, e.school_id
FROM reader_events e
WHERE e.id > :from_id AND e.id <= :to_id AND e.event_type <> 'cam_status'
"""

_SCOPE_DAYS = f"""
SELECT DISTINCT e.username, {LOCAL_DAY} AS day_no
FROM tmp_new e {ZONE_JOIN}
"""  # noqa: S608 - fixed text

# ``stored``: an earlier run processed events of that day (each gave it an an_student_days
# row); a day without is new, and the new rows are all its events.
# ``day_key``: the group's number, a sort key cheaper than (username, day_no) (PostgreSQL
# sorted 420k new rows by a text column in 0.8 s; by numbers, ~0.15 s).
_SCOPE_WINDOWS = """
SELECT d.username, d.day_no, c.day,
       ROW_NUMBER() OVER (ORDER BY d.username, d.day_no) AS day_key,
       d.day_no * 86400000 - 50400000 AS lo_ms, (d.day_no + 1) * 86400000 + 50400000 AS hi_ms,
       CASE WHEN EXISTS (SELECT 1 FROM an_student_days s
                         WHERE s.username = d.username AND s.day = c.day)
            THEN 1 ELSE 0 END AS stored
FROM tmp_scope0 d JOIN tmp_calendar c ON c.day_no = d.day_no
"""

_X_COLUMNS = ", ".join(f"x.{name}" for name in EVENT_COLUMNS.split(", "))
# The new days' events: the new rows again (read, not copied, twice: SQLite took 1.5 s
# more to carry every column through ``tmp_new``).
_EVENTS_OF_NEW_DAYS = f"""
INSERT INTO tmp_ev ({EVENT_COLUMNS})
SELECT {_X_COLUMNS} FROM (
  SELECT {_EVENT_VALUES}, d.day_key
  FROM reader_events e {ZONE_JOIN}
  JOIN tmp_scope_days d ON d.username = e.username AND d.day_no = {LOCAL_DAY} AND d.stored = 0
  WHERE e.id > :from_id AND e.id <= :to_id AND e.event_type <> 'cam_status'
) x ORDER BY x.day_key, x.app_time_ms, x.id
"""  # noqa: S608 - fixed text

# Every event of the other days: the index (username, app_time_ms) finds the student's
# events in the UTC span that holds the local day (widened by 14 h), the zone join keeps
# the day's. (Each day's rows stay together in ``rn`` order, which is all ``tmp_timed``
# needs of two inserts.)
_EVENTS_OF_STORED_DAYS = f"""
INSERT INTO tmp_ev ({EVENT_COLUMNS})
SELECT {_X_COLUMNS} FROM (
  SELECT {_EVENT_VALUES}, d.day_key
  FROM tmp_scope_days d
  JOIN reader_events e ON e.username = d.username
                      AND e.app_time_ms >= d.lo_ms AND e.app_time_ms < d.hi_ms
  {ZONE_JOIN}
  WHERE d.stored = 1 AND e.id <= :to_id AND e.event_type <> 'cam_status'
    AND {LOCAL_DAY} = d.day_no
) x ORDER BY x.day_key, x.app_time_ms, x.id
"""  # noqa: S608 - fixed text

_ALL_EVENTS = f"""
INSERT INTO tmp_ev ({EVENT_COLUMNS})
SELECT x.* FROM (
  SELECT {_EVENT_VALUES}
  FROM reader_events e {ZONE_JOIN}
  WHERE e.id <= :to_id AND e.event_type <> 'cam_status'
) x {_IN_ORDER}
"""  # noqa: S608 - fixed text

# Each event's session end, counted page time and end reason, from the next event of its
# student's day (row rn + 1, if it has the same student and day: ``has_next``).
IS_LAST = """(CASE WHEN x.has_next = 0 OR x.next_ms - x.app_time_ms > :session_gap_ms
                   OR x.event_type = 'app_session_ended'
                   OR x.next_type = 'app_session_started' THEN 1 ELSE 0 END)"""
# The raw time of a page: the gap to the next event of its session, else its duration_ms.
_RAW_MS = f"""(CASE WHEN {IS_LAST} = 1 THEN COALESCE(x.duration_ms, 0)
                  ELSE x.next_ms - x.app_time_ms END)"""
_PAGE_MS = f"""(CASE WHEN x.event_type <> 'page_viewed' OR {_RAW_MS} < :page_min_ms THEN 0
                    WHEN {_RAW_MS} > :page_max_ms THEN :page_max_ms
                    ELSE {_RAW_MS} END)"""
_END_REASON = f"""(CASE WHEN {IS_LAST} = 0 THEN ''
                       WHEN x.event_type = 'app_session_ended' THEN 'app_session_ended'
                       WHEN x.has_next = 0 THEN 'last_of_day'
                       WHEN x.next_type = 'app_session_started' THEN 'app_session_started'
                       ELSE 'gap' END)"""
# Session keys: 1 + the sessions ended before the row, in rn order (unique over all days).
_TIMED = f"""
SELECT y.*, SUM(y.is_last) OVER (ORDER BY y.rn ROWS UNBOUNDED PRECEDING) - y.is_last + 1
         AS session_key
FROM (
  SELECT x.rn, x.username, x.day_no, x.app_time_ms, x.school_id, x.event_type, x.book_id,
         x.page, {IS_LAST} AS is_last, {_PAGE_MS} AS page_ms, {_END_REASON} AS end_reason
  FROM (
    SELECT a.*, CASE WHEN b.rn IS NULL THEN 0 ELSE 1 END AS has_next,
           b.app_time_ms AS next_ms, b.event_type AS next_type
    FROM tmp_ev a
    LEFT JOIN tmp_ev b ON b.rn = a.rn + 1 AND b.username = a.username AND b.day_no = a.day_no
  ) x
) y
"""  # noqa: S608 - fixed text

# A page is read when it counted some time; pages are numbered from 1 (0 means unset).
PAGE_READ = "a.page_ms > 0 AND a.book_id IS NOT NULL AND a.page > 0"
PAGE_KEY = "a.book_id || '#' || CAST(a.page AS TEXT)"
# A day is active when the student did something in a book, a deck or a path.
ACTIVE_TYPES = (
    "'page_viewed', 'book_opened', 'book_closed', 'resource_opened', "
    "'flashcard_reviewed', 'lp_step_completed'"
)

# The sessions, with the counts that days.py adds up (an_sessions keeps some of them).
# Active time: from the first event to the last, plus the last page's counted time.
_SESSIONS = f"""
SELECT MIN(a.username) AS username, MIN(a.day_no) AS day_no, a.session_key,
       MIN(a.school_id) AS school_id, MIN(a.app_time_ms) AS start_ms,
       MAX(a.app_time_ms) AS end_ms, MAX(a.end_reason) AS end_reason, COUNT(*) AS events,
       SUM(CASE WHEN a.event_type = 'page_viewed' THEN 1 ELSE 0 END) AS page_views,
       COUNT(DISTINCT CASE WHEN {PAGE_READ} THEN {PAGE_KEY} END) AS pages_read,
       COUNT(DISTINCT CASE WHEN {PAGE_READ} THEN a.book_id END) AS books_read,
       SUM(a.page_ms) AS reading_ms,
       MAX(a.app_time_ms) - MIN(a.app_time_ms)
         + SUM(CASE WHEN a.is_last = 1 THEN a.page_ms ELSE 0 END) AS active_ms,
       SUM(CASE WHEN a.event_type = 'flashcard_reviewed' THEN 1 ELSE 0 END) AS flashcard_reviews,
       SUM(CASE WHEN a.event_type = 'lp_step_completed' THEN 1 ELSE 0 END) AS lp_steps,
       SUM(CASE WHEN a.event_type = 'resource_opened' THEN 1 ELSE 0 END) AS resources_opened,
       MAX(CASE WHEN a.event_type IN ({ACTIVE_TYPES}) THEN 1 ELSE 0 END) AS is_active
FROM tmp_timed a
GROUP BY a.session_key
"""  # noqa: S608 - fixed text

# Sessions numbered 1, 2... in their day, named by the day's date.
_NUMBERED_SESSIONS = """
SELECT s.*, c.day,
       s.session_key - MIN(s.session_key) OVER (PARTITION BY s.username, s.day_no) + 1
         AS session_no
FROM tmp_sessions0 s JOIN tmp_calendar c ON c.day_no = s.day_no
"""

_PAGE_DAYS = """
SELECT a.username, a.book_id, a.page, c.day, COUNT(*) AS views,
       SUM(a.page_ms) AS reading_ms, MAX(a.app_time_ms) AS last_view_ms
FROM tmp_timed a
JOIN tmp_calendar c ON c.day_no = a.day_no
WHERE a.event_type = 'page_viewed' AND a.book_id IS NOT NULL
GROUP BY a.username, a.book_id, a.page, c.day
"""

_DAYS_OF_SESSIONS = "SELECT DISTINCT s.username, s.day_no, s.day FROM tmp_out_sessions s"

SESSION_COLUMNS = (
    "username, day, session_no, school_id, start_ms, end_ms, end_reason, events, "
    "page_views, pages_read, books_read, reading_ms, active_ms"
)
PAGE_DAY_COLUMNS = "username, book_id, page, day, views, reading_ms, last_view_ms"


def select_scope(db: ProcessingDb, params: Params, *, full: bool) -> None:
    """Create ``tmp_ev`` (and, incremental, ``tmp_scope_days``): the events to recompute."""
    db.create_temp_table(
        "tmp_ev",
        f"rn {db.row_number_type}, id BIGINT, username TEXT, day_no BIGINT, "
        "app_time_ms BIGINT, school_id TEXT, event_type TEXT, book_id TEXT, page INTEGER, "
        "duration_ms BIGINT, lp_id TEXT, step_id TEXT, score DOUBLE PRECISION",
    )
    if full:
        db.execute(_ALL_EVENTS, params)
    else:
        db.create_temp("tmp_new", _NEW_ROWS, params)
        db.create_temp("tmp_scope0", _SCOPE_DAYS)
        db.create_temp("tmp_scope_days", _SCOPE_WINDOWS, joined=True)
        db.execute(_EVENTS_OF_NEW_DAYS, params)
        with db.index_lookups():
            db.execute(_EVENTS_OF_STORED_DAYS, params)
    db.analyze("tmp_ev")


def compute_reading(db: ProcessingDb, params: Params, *, full: bool) -> None:
    """Create the new rows of sessions and page days, and the touched books."""
    db.create_temp("tmp_timed", _TIMED, params)
    db.create_temp("tmp_sessions0", _SESSIONS)
    db.create_temp("tmp_out_sessions", _NUMBERED_SESSIONS)
    db.create_temp("tmp_out_page_days", _PAGE_DAYS)
    if full:
        db.create_temp("tmp_scope_days", _DAYS_OF_SESSIONS, joined=True)
    else:
        db.create_temp("tmp_regrouped_books", _REGROUPED_BOOKS, joined=True)
        db.create_temp("tmp_gained_page_days", _GAINED_PAGE_DAYS)
        db.create_temp("tmp_book_gains", _BOOK_GAINS, joined=True)


def apply_reading(db: ProcessingDb, params: Params) -> None:
    """Replace the recomputed days' sessions and page days (inside the write transaction)."""
    for table, columns, source in (
        ("an_sessions", SESSION_COLUMNS, "tmp_out_sessions"),
        ("an_page_days", PAGE_DAY_COLUMNS, "tmp_out_page_days"),
    ):
        replace_days(db, table)
        db.execute(
            f"INSERT INTO {table} ({columns}, run_id) SELECT {columns}, :run_id FROM {source}",  # noqa: S608
            params,
        )


def replace_days(db: ProcessingDb, table: str) -> None:
    """Delete a day-grain table's rows of the recomputed (student, day) groups."""
    db.execute(
        f"DELETE FROM {table} WHERE (username, day) IN "  # noqa: S608
        "(SELECT username, day FROM tmp_scope_days)"
    )


_READ_IN_BOOK = "CASE WHEN p.reading_ms > 0 AND p.page BETWEEN 1 AND b.page_count THEN p.page END"
# A (student, book)'s figures from its page days, grouped in the primary key's order.
_BOOK_GROUPS = f"""
SELECT p.username, p.book_id, MAX(b.page_count) AS page_count,
       COUNT(DISTINCT CASE WHEN p.reading_ms > 0 AND p.page > 0 THEN p.page END) AS pages_read,
       COUNT(DISTINCT {_READ_IN_BOOK}) AS read_in_book,
       SUM(p.views) AS page_views, SUM(p.reading_ms) AS reading_ms,
       MAX(p.last_view_ms) AS last_view_ms,
       -- The last page: the highest page of the newest view, packed with its time into
       -- one number (a correlated lookup per book cost 15 s at 10M on PostgreSQL).
       MAX(p.last_view_ms * 1000000
           + CASE WHEN p.page BETWEEN 0 AND 999999 THEN p.page ELSE 0 END) AS last_key,
       COUNT(DISTINCT CASE WHEN p.reading_ms > 0 THEN p.day END) AS days_read,
       MIN(p.day) AS first_day, MAX(p.day) AS last_day
FROM {{pages}}
LEFT JOIN ec_books b ON b.book_id = p.book_id
GROUP BY p.username, p.book_id
"""  # noqa: S608 - fixed text

# The rows of an_student_books from such figures.
_BOOKS = """
SELECT g.username, g.book_id, g.page_count, g.pages_read, g.page_views, g.reading_ms,
       g.last_key - g.last_key / 1000000 * 1000000 AS last_page,  -- integer division
       g.last_view_ms, g.days_read, g.first_day, g.last_day,
       CASE WHEN g.page_count > 0
            THEN CAST(g.read_in_book AS DOUBLE PRECISION) / g.page_count END AS completion,
       CASE WHEN g.page_count > 0
            THEN CASE WHEN g.read_in_book * 1000000 >= :completed_ppm * g.page_count
                      THEN 1 ELSE 0 END END AS is_completed,
       :run_id AS run_id
FROM ({groups}) g
"""  # noqa: S608 - fixed text

# Pairs with page days already stored on a recomputed day (late events): their old
# figures hold days that are being replaced, so they are grouped again from their page days.
# Only a stored day can have some; CROSS JOIN keeps SQLite's order (it scanned all 3.7M
# page days for the 447 days of a new day, 1.6 s; PostgreSQL plans it freely).
_REGROUPED_BOOKS = """
SELECT DISTINCT p.username, p.book_id
FROM tmp_scope_days d CROSS JOIN an_page_days p
WHERE d.stored = 1 AND p.username = d.username AND p.day = d.day
"""

# The other touched pairs only gain page days (of days that had none): those, each marked
# ``first_read`` when it reads a page that none of the pair's stored page days (all of
# other days) read. (A CASE, so a lookup in the primary key per row, evaluated once here.)
_GAINED_PAGE_DAYS = """
SELECT p.*,
       CASE WHEN p.reading_ms > 0 AND p.page > 0 AND NOT EXISTS (
              SELECT 1 FROM an_page_days o
              WHERE o.username = p.username AND o.book_id = p.book_id AND o.page = p.page
                AND o.reading_ms > 0)
            THEN 1 ELSE 0 END AS first_read
FROM tmp_out_page_days p
WHERE NOT EXISTS (SELECT 1 FROM tmp_regrouped_books r
                  WHERE r.username = p.username AND r.book_id = p.book_id)
"""
# What those add, computed before they are written.
_BOOK_GAINS = """
SELECT n.username, n.book_id, MAX(b.page_count) AS page_count,
       COUNT(DISTINCT CASE WHEN n.first_read = 1 THEN n.page END) AS pages_read,
       COUNT(DISTINCT CASE WHEN n.first_read = 1 AND n.page <= b.page_count
                           THEN n.page END) AS read_in_book,
       SUM(n.views) AS page_views, SUM(n.reading_ms) AS reading_ms,
       MAX(n.last_view_ms) AS last_view_ms,
       MAX(n.last_view_ms * 1000000
           + CASE WHEN n.page BETWEEN 0 AND 999999 THEN n.page ELSE 0 END) AS last_key,
       COUNT(DISTINCT CASE WHEN n.reading_ms > 0 THEN n.day END) AS days_read,
       MIN(n.day) AS first_day, MAX(n.day) AS last_day
FROM tmp_gained_page_days n
LEFT JOIN ec_books b ON b.book_id = n.book_id
GROUP BY n.username, n.book_id
"""

# Stored figures plus gains. The stored row keeps the share of the book read, not the
# count: pages = share x page count, exact as a double for any real book.
_OLD_KEY = "(o.last_view_ms * 1000000 + o.last_page)"
_GAINED_GROUPS = f"""
SELECT n.username, n.book_id, n.page_count,
       COALESCE(o.pages_read, 0) + n.pages_read AS pages_read,
       COALESCE(CAST(ROUND(o.completion * o.page_count) AS INTEGER), 0) + n.read_in_book
         AS read_in_book,
       COALESCE(o.page_views, 0) + n.page_views AS page_views,
       COALESCE(o.reading_ms, 0) + n.reading_ms AS reading_ms,
       CASE WHEN o.username IS NULL OR n.last_view_ms > o.last_view_ms THEN n.last_view_ms
            ELSE o.last_view_ms END AS last_view_ms,
       CASE WHEN o.username IS NULL OR n.last_key > {_OLD_KEY} THEN n.last_key
            ELSE {_OLD_KEY} END AS last_key,
       COALESCE(o.days_read, 0) + n.days_read AS days_read,
       CASE WHEN o.username IS NULL OR n.first_day < o.first_day THEN n.first_day
            ELSE o.first_day END AS first_day,
       CASE WHEN o.username IS NULL OR n.last_day > o.last_day THEN n.last_day
            ELSE o.last_day END AS last_day
FROM tmp_book_gains n
LEFT JOIN tmp_books_before o ON o.username = n.username AND o.book_id = n.book_id
"""  # noqa: S608 - fixed text

BOOK_COLUMNS = (
    "username, book_id, page_count, pages_read, page_views, reading_ms, last_page, "
    "last_view_ms, days_read, first_day, last_day, completion, is_completed, run_id"
)


def roll_up_books(db: ProcessingDb, params: Params, *, every_book: bool) -> None:
    """Recompute an_student_books for the touched (student, book) pairs, or for all."""
    if not every_book:
        # Many late days (a class's tablets back after a week offline): one pass over
        # every page day, in key order, beats a lookup per pair (PostgreSQL at 10M: 5.5 s
        # against 6.7 s for 10k of 16k pairs).
        regrouped, known = db.query(
            "SELECT (SELECT count(*) FROM tmp_regrouped_books), "
            "(SELECT count(*) FROM an_student_books)"
        )[0]
        every_book = int(regrouped) > REGROUP_ALL_MIN and int(regrouped) * 4 > int(known)
    if every_book:
        db.execute("DELETE FROM an_student_books")
        db.execute(_INSERT_BOOKS.format(groups=_BOOK_GROUPS.format(pages="an_page_days p")), params)
        return
    # A new day only adds to a pair's figures: stored plus gains (PostgreSQL at 10M, a
    # school day touching 10k of 16k pairs: 1.2 s with the gains, against 2.3-5.5 s).
    db.create_temp(
        "tmp_books_before",
        "SELECT o.* FROM tmp_book_gains n JOIN an_student_books o "
        "ON o.username = n.username AND o.book_id = n.book_id",
    )
    _delete_books(db, "tmp_book_gains")
    db.execute(_INSERT_BOOKS.format(groups=_GAINED_GROUPS), params)
    # Pairs with late events on days already stored: grouped again from their page days,
    # each one range of the primary key (joined from the distinct pairs: as
    # `IN (SELECT ...)` SQLite read every book of every student through the username index).
    _delete_books(db, "tmp_regrouped_books")
    pages = (
        "tmp_regrouped_books t JOIN an_page_days p "
        "ON p.username = t.username AND p.book_id = t.book_id"
    )
    db.execute(_INSERT_BOOKS.format(groups=_BOOK_GROUPS.format(pages=pages)), params)


# Below this many pairs to regroup, always pair by pair (quick at any size of store).
REGROUP_ALL_MIN = 2000
_INSERT_BOOKS = f"INSERT INTO an_student_books ({BOOK_COLUMNS}) {_BOOKS}"  # noqa: S608


def _delete_books(db: ProcessingDb, pairs: str) -> None:
    db.execute(
        "DELETE FROM an_student_books WHERE (username, book_id) IN "  # noqa: S608
        f"(SELECT username, book_id FROM {pairs})"
    )
