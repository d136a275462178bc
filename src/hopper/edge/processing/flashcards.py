"""Flashcards: each card's FSRS state (an_flashcard_cards) and per deck (an_flashcard_decks).

A card is ``(username, deck_id, card_id)``; its reviews are its ``flashcard_reviewed``
events in ``(app_time_ms, id)`` order, replayed through the FSRS scheduler of PyPI
``fsrs`` (default parameters, no fuzzing, so a replay is deterministic). A grade below
``flashcard_pass_grade`` is "Again" (a failure), the pass grade "Hard", one more "Good",
two or more "Easy". A lapse is an "Again" on a card in the Review state (Anki's
definition); retention is the share of passed reviews among reviews of cards in the
Review state (Anki's "true retention": review cards only).

The replay is the only part in Python, because each review depends on the card's state
before it. A run continues a card from its stored state when its new reviews all come
after its last replayed one, the usual case; a late review (a tablet that was offline)
makes the run replay that card from its first review.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fsrs import Card, Rating, Scheduler, State

from hopper.config import ProcessingSettings
from hopper.edge.processing.db import Params, ProcessingDb

logger = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)

CardKey = tuple[str, str, str]
Review = tuple[int, int, int]  # (reader_events.id, app_time_ms, grade)


@dataclass(slots=True)
class CardRow:
    """A row of an_flashcard_cards (without run_id)."""

    username: str
    deck_id: str
    card_id: str
    reviews: int
    first_review_ms: int
    first_grade: int
    lapses: int
    review_state_reviews: int
    review_state_passes: int
    fsrs_state: int
    fsrs_step: int | None
    stability: float
    difficulty: float
    due_ms: int
    last_review_ms: int
    last_review_id: int
    last_grade: int

    def values(self) -> tuple[Any, ...]:
        """Return the fields in CARD_COLUMNS order (``dataclasses.astuple`` copies deeply)."""
        return (
            self.username,
            self.deck_id,
            self.card_id,
            self.reviews,
            self.first_review_ms,
            self.first_grade,
            self.lapses,
            self.review_state_reviews,
            self.review_state_passes,
            self.fsrs_state,
            self.fsrs_step,
            self.stability,
            self.difficulty,
            self.due_ms,
            self.last_review_ms,
            self.last_review_id,
            self.last_grade,
        )


CARD_COLUMNS = (
    "username",
    "deck_id",
    "card_id",
    "reviews",
    "first_review_ms",
    "first_grade",
    "lapses",
    "review_state_reviews",
    "review_state_passes",
    "fsrs_state",
    "fsrs_step",
    "stability",
    "difficulty",
    "due_ms",
    "last_review_ms",
    "last_review_id",
    "last_grade",
)
_COLUMNS = ", ".join(CARD_COLUMNS)


def _time(ms: int) -> datetime:
    return _EPOCH + ms * _MS


def _ms(moment: datetime) -> int:
    return (moment - _EPOCH) // _MS


class CardReplayer:
    """Replays reviews through one FSRS scheduler, built from the settings."""

    def __init__(self, settings: ProcessingSettings) -> None:
        self._pass = settings.flashcard_pass_grade
        self._scheduler = Scheduler(
            desired_retention=settings.fsrs_desired_retention,
            learning_steps=tuple(timedelta(minutes=m) for m in settings.fsrs_learning_steps_mins),
            relearning_steps=tuple(
                timedelta(minutes=m) for m in settings.fsrs_relearning_steps_mins
            ),
            maximum_interval=settings.fsrs_maximum_interval_days,
            enable_fuzzing=False,  # fuzz is random: a replay must give the same result
        )

    def rating(self, grade: int) -> Rating:
        """Map a 0-5 grade to an FSRS rating."""
        if grade < self._pass:
            return Rating.Again
        if grade == self._pass:
            return Rating.Hard
        if grade == self._pass + 1:
            return Rating.Good
        return Rating.Easy

    def replay(self, key: CardKey, row: CardRow | None, reviews: Iterable[Review]) -> CardRow:
        """Apply reviews, in order, to a card's stored state (None: a card never reviewed)."""
        reviews = iter(reviews)
        if row is None:
            event_id, at_ms, grade = next(reviews)
            row = CardRow(*key, 0, at_ms, grade, 0, 0, 0, 0, None, 0.0, 0.0, at_ms, at_ms, 0, 0)
            card = Card(card_id=0, due=_time(at_ms))
            reviews = itertools.chain([(event_id, at_ms, grade)], reviews)
        else:
            card = Card(
                card_id=0,
                state=State(row.fsrs_state),
                step=row.fsrs_step,
                stability=row.stability,
                difficulty=row.difficulty,
                due=_time(row.due_ms),
                last_review=_time(row.last_review_ms),
            )
        for event_id, at_ms, grade in reviews:
            rating = self.rating(grade)
            if card.state == State.Review:
                row.review_state_reviews += 1
                if rating != Rating.Again:
                    row.review_state_passes += 1
                else:
                    row.lapses += 1
            card, _ = self._scheduler.review_card(card, rating, _time(at_ms))
            row.reviews += 1
            row.last_review_ms, row.last_review_id, row.last_grade = at_ms, event_id, grade
        row.fsrs_state, row.fsrs_step = int(card.state), card.step
        row.stability = float(card.stability or 0.0)
        row.difficulty = float(card.difficulty or 0.0)
        row.due_ms = _ms(card.due)
        return row


_REVIEW_COLUMNS = """
SELECT e.id, e.username, e.app_time_ms,
       e.payload ->> 'deck_id' AS deck_id, e.payload ->> 'card_id' AS card_id,
       CAST(e.payload ->> 'grade' AS INTEGER) AS grade
FROM reader_events e
"""
_NEW_REVIEWS = f"""
{_REVIEW_COLUMNS}
WHERE e.id > :from_id AND e.id <= :to_id AND e.event_type = 'flashcard_reviewed'
"""  # noqa: S608 - fixed text

_TOUCHED_CARDS = f"""
SELECT t.username, t.deck_id, t.card_id, t.first_new_ms, {", ".join("c." + c for c in CARD_COLUMNS)}
FROM (
  SELECT n.username, n.deck_id, n.card_id, MIN(n.app_time_ms) AS first_new_ms
  FROM tmp_new_reviews n GROUP BY n.username, n.deck_id, n.card_id
) t
LEFT JOIN an_flashcard_cards c
       ON c.username = t.username AND c.deck_id = t.deck_id AND c.card_id = t.card_id
"""  # noqa: S608 - fixed text

_ORDER = "ORDER BY r.username, r.deck_id, r.card_id, r.app_time_ms, r.id"
_CONTINUED_REVIEWS = f"""
SELECT r.username, r.deck_id, r.card_id, r.id, r.app_time_ms, r.grade
FROM tmp_new_reviews r {_ORDER}
"""  # noqa: S608 - fixed text

_REPLAYED_REVIEWS = f"""
SELECT r.username, r.deck_id, r.card_id, r.id, r.app_time_ms, r.grade
FROM ({_REVIEW_COLUMNS}
      WHERE e.event_type = 'flashcard_reviewed' AND e.id <= :to_id
        AND e.username IN (SELECT username FROM tmp_replay_cards)) r
JOIN tmp_replay_cards t
  ON t.username = r.username AND t.deck_id = r.deck_id AND t.card_id = r.card_id
{_ORDER}
"""  # noqa: S608 - fixed text
_ALL_REVIEWS = f"""
SELECT r.username, r.deck_id, r.card_id, r.id, r.app_time_ms, r.grade
FROM ({_REVIEW_COLUMNS} WHERE e.event_type = 'flashcard_reviewed' AND e.id <= :to_id) r
{_ORDER}
"""  # noqa: S608 - fixed text


def _by_card(rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[CardKey, Iterator[Review]]]:
    for key, group in itertools.groupby(rows, key=lambda r: (r[0], r[1], r[2])):
        yield key, ((int(r[3]), int(r[4]), int(r[5])) for r in group)


def replay_cards(
    db: ProcessingDb, settings: ProcessingSettings, params: Params, *, full: bool
) -> list[CardRow]:
    """Return the new state of every card with new reviews (all cards when ``full``).

    Reads only stored tables, on a connection of its own: the run calls it in a thread
    beside the SQL of the other tables (the SQL releases the GIL, the replay holds it).
    """
    replayer = CardReplayer(settings)
    out: list[CardRow] = []
    if full:
        for key, reviews in _by_card(db.stream(_ALL_REVIEWS, params)):
            out.append(replayer.replay(key, None, reviews))
        return out
    db.create_temp("tmp_new_reviews", _NEW_REVIEWS, params)
    stored: dict[CardKey, CardRow | None] = {}
    replay: list[CardKey] = []
    for username, deck_id, card_id, first_new_ms, *state in db.query(_TOUCHED_CARDS):
        key = (username, deck_id, card_id)
        row = None if state[0] is None else CardRow(*state)
        if row is not None and first_new_ms < row.last_review_ms:
            replay.append(key)  # a late review: replay the card from the start
        else:
            stored[key] = row
    for key, reviews in _by_card(db.stream(_CONTINUED_REVIEWS)):
        if key in stored:
            out.append(replayer.replay(key, stored[key], reviews))
    if replay:
        db.create_temp_table("tmp_replay_cards", "username TEXT, deck_id TEXT, card_id TEXT")
        db.insert_rows("tmp_replay_cards", ("username", "deck_id", "card_id"), replay)
        db.analyze("tmp_replay_cards")
        for key, reviews in _by_card(db.stream(_REPLAYED_REVIEWS, params)):
            out.append(replayer.replay(key, None, reviews))
    logger.debug("Flashcards: %d cards continued, %d replayed.", len(stored), len(replay))
    return out


def store_cards(db: ProcessingDb, rows: list[CardRow]) -> None:
    """Create ``tmp_out_cards`` holding the replayed cards (on the run's connection)."""
    db.create_temp_table(
        "tmp_out_cards",
        "username TEXT, deck_id TEXT, card_id TEXT, reviews INTEGER, first_review_ms BIGINT, "
        "first_grade INTEGER, lapses INTEGER, review_state_reviews INTEGER, "
        "review_state_passes INTEGER, fsrs_state INTEGER, fsrs_step INTEGER, "
        "stability DOUBLE PRECISION, difficulty DOUBLE PRECISION, due_ms BIGINT, "
        "last_review_ms BIGINT, last_review_id BIGINT, last_grade INTEGER",
    )
    db.insert_rows("tmp_out_cards", CARD_COLUMNS, (row.values() for row in rows))
    db.analyze("tmp_out_cards")


def apply_cards(db: ProcessingDb, params: Params, *, full: bool) -> None:
    """Replace the recomputed cards' rows (inside the write transaction)."""
    if full:
        db.execute("DELETE FROM an_flashcard_cards")
    else:
        db.execute(
            "DELETE FROM an_flashcard_cards WHERE (username, deck_id, card_id) IN "
            "(SELECT username, deck_id, card_id FROM tmp_out_cards)"
        )
    db.execute(
        f"INSERT INTO an_flashcard_cards ({_COLUMNS}, run_id) "  # noqa: S608
        f"SELECT {_COLUMNS}, :run_id FROM tmp_out_cards",
        params,
    )


_DECKS = """
SELECT c.username, c.deck_id, COUNT(*) AS cards_studied, SUM(c.reviews) AS reviews,
       SUM(CASE WHEN c.first_grade >= :pass_grade THEN 1 ELSE 0 END) AS first_try_correct,
       CAST(SUM(CASE WHEN c.first_grade >= :pass_grade THEN 1 ELSE 0 END) AS DOUBLE PRECISION)
         / COUNT(*) AS first_try_share,
       SUM(c.lapses) AS lapses,
       SUM(CASE WHEN c.fsrs_state = 2 AND c.due_ms - c.last_review_ms >= :mastered_ms
                THEN 1 ELSE 0 END) AS mastered_cards,
       SUM(c.review_state_reviews) AS retention_reviews,
       SUM(c.review_state_passes) AS retention_passes,
       CASE WHEN SUM(c.review_state_reviews) > 0
            THEN CAST(SUM(c.review_state_passes) AS DOUBLE PRECISION)
                 / SUM(c.review_state_reviews) END AS retention,
       SUM(CASE WHEN c.due_ms < t.today_end_ms THEN 1 ELSE 0 END) AS due_today,
       SUM(CASE WHEN c.due_ms >= t.today_end_ms AND c.due_ms < t.tomorrow_end_ms
                THEN 1 ELSE 0 END) AS due_tomorrow,
       MAX(c.last_review_ms) AS last_review_ms, d.day AS as_of_day, :run_id AS run_id
FROM an_flashcard_cards c
LEFT JOIN tmp_student_zone z ON z.username = c.username
JOIN tmp_today t ON t.time_zone = COALESCE(z.time_zone, 'UTC')
JOIN tmp_calendar d ON d.day_no = t.today_no
GROUP BY c.username, c.deck_id, d.day
"""

DECK_COLUMNS = (
    "username, deck_id, cards_studied, reviews, first_try_correct, first_try_share, lapses, "
    "mastered_cards, retention_reviews, retention_passes, retention, due_today, due_tomorrow, "
    "last_review_ms, as_of_day, run_id"
)


def roll_up_decks(db: ProcessingDb, params: Params) -> None:
    """Recompute an_flashcard_decks for every deck (due counts depend on today)."""
    db.execute("DELETE FROM an_flashcard_decks")
    db.execute(f"INSERT INTO an_flashcard_decks ({DECK_COLUMNS}) {_DECKS}", params)  # noqa: S608
