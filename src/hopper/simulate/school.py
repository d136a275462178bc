"""A simulated school: students on tablets reading books, streaming events to Hopper."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hopper.client import WebSocketSender, make_event
from hopper.events._pb import events_pb2 as pb
from hopper.events.protobuf import encode_batch

logger = logging.getLogger(__name__)

BOOKS = [f"book-{n:03d}" for n in range(1, 41)]
DECKS = [f"deck-{n:02d}" for n in range(1, 11)]
PATHS = [f"lp-{n:02d}" for n in range(1, 6)]

Step = tuple[str, dict[str, Any]]


@dataclass
class Student:
    """One student with a tablet; ``activity`` yields what they do next, forever."""

    username: str
    device_id: str
    school_id: str
    rng: random.Random
    battery: int = 100
    session: int = 0
    _last_ms: int = 0
    _steps: Iterator[Step] = field(init=False)

    def __post_init__(self) -> None:
        self._steps = self._activity()

    def next_event(self, now_ms: int) -> pb.Event:
        """Build this student's next event, stamped with a strictly increasing app time."""
        event_type, fields = next(self._steps)
        self._last_ms = max(now_ms, self._last_ms + 1)
        return make_event(
            event_type,
            fields,
            username=self.username,
            device_id=self.device_id,
            school_id=self.school_id,
            app_time_ms=self._last_ms,
            app_version="3.2.1",
            platform="android",
            session_id=f"{self.device_id}-s{self.session}",
        )

    def _activity(self) -> Iterator[Step]:
        rng = self.rng
        while True:
            self.session += 1
            yield "app_session_started", {}
            for _ in range(rng.randint(1, 4)):
                choice = rng.random()
                if choice < 0.6:
                    yield from self._read_book()
                elif choice < 0.85:
                    yield from self._review_flashcards()
                else:
                    yield from self._learning_path()
                yield from self._heartbeat(None, 0)
            yield "app_session_ended", {}

    def _read_book(self) -> Iterator[Step]:
        rng = self.rng
        book = rng.choice(BOOKS)
        yield "book_opened", {"book_id": book}
        page = rng.randint(1, 20)
        for _ in range(rng.randint(3, 25)):
            # Reading times are long-tailed: most pages take 10-60 s, a few several minutes.
            duration = int(min(rng.lognormvariate(10.1, 0.7), 600_000))
            yield "page_viewed", {"book_id": book, "page": page, "duration_ms": duration}
            if rng.random() < 0.05:
                yield "resource_opened", {"resource_id": f"{book}-res-{page}", "book_id": book}
            if rng.random() < 0.2:
                yield from self._heartbeat(book, page)
            page += 1 if rng.random() < 0.9 else -1
            page = max(page, 1)
        yield "book_closed", {"book_id": book}

    def _review_flashcards(self) -> Iterator[Step]:
        rng = self.rng
        deck = rng.choice(DECKS)
        for card in rng.sample(range(1, 60), rng.randint(5, 20)):
            yield (
                "flashcard_reviewed",
                {
                    "deck_id": deck,
                    "card_id": f"{deck}-c{card}",
                    "grade": rng.choices(range(6), weights=[1, 2, 3, 5, 6, 4])[0],
                    "response_ms": int(rng.lognormvariate(8.3, 0.6)),
                },
            )

    def _learning_path(self) -> Iterator[Step]:
        rng = self.rng
        path = rng.choice(PATHS)
        for step in range(1, rng.randint(2, 6)):
            yield (
                "lp_step_completed",
                {
                    "lp_id": path,
                    "step_id": f"{path}-step-{step}",
                    "score": round(rng.betavariate(5, 2), 2),
                },
            )

    def _heartbeat(self, book: str | None, page: int) -> Iterator[Step]:
        self.battery = max(5, self.battery - (1 if self.rng.random() < 0.3 else 0))
        yield (
            "cam_status",
            {
                "foreground_app": "hopper.reader" if book else "launcher",
                "book_id": book or "",
                "page": page,
                "screen_on": True,
                "battery_pct": self.battery,
            },
        )


class SimulatedSchool:
    """A class of students; builds per-device batches as the app would send them."""

    def __init__(self, students: int, *, school_id: str = "school-001", seed: int = 7) -> None:
        rng = random.Random(seed)
        self.students = [
            Student(f"student{n:04d}", f"tablet-{n:04d}", school_id, random.Random(rng.random()))
            for n in range(1, students + 1)
        ]
        self._rng = rng

    def next_batch(self, size: int, *, bad_share: float = 0.0) -> tuple[bytes, int]:
        """Return one device's batch of ``size`` events and how many were made invalid."""
        student = self._rng.choice(self.students)
        now = time.time_ns() // 1_000_000
        events = [student.next_event(now) for _ in range(size)]
        bad = 0
        for event in events:
            if self._rng.random() < bad_share:
                event.app_time_ms += 3_600_000  # a tablet whose clock runs an hour ahead
                bad += 1
        return encode_batch(events), bad


@dataclass
class TrafficCounts:
    """What the simulator sent and what the server acknowledged."""

    batches: int = 0
    events: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0


async def stream_school(
    url: str,
    school: SimulatedSchool,
    counts: TrafficCounts,
    *,
    events_per_sec: float,
    batch_size: int = 50,
    bad_share: float = 0.005,
    token: str | None = None,
) -> None:
    """Stream the school's events over one WebSocket at a steady rate, until cancelled."""
    interval = batch_size / events_per_sec
    async with WebSocketSender(url, token=token) as ws:
        pending: list[int] = []

        async def collect() -> None:
            while pending:
                ack = await ws.wait(pending.pop(0))
                counts.accepted += ack["accepted"]
                counts.duplicates += ack["duplicates"]
                counts.rejected += ack["rejected"]

        next_at = time.monotonic()
        while True:
            payload, _ = school.next_batch(batch_size, bad_share=bad_share)
            pending.append(await ws.send(payload))
            counts.batches += 1
            counts.events += batch_size
            if len(pending) >= 16:
                await collect()
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await collect()
                await asyncio.sleep(delay)
