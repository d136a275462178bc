"""The group-commit writer: many payloads per transaction, acks after commit, retries."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from hopper.config import load_settings
from hopper.errors import BackendUnavailable
from hopper.events import Event, content_hash
from hopper.ingest.base import BatchOutcome
from hopper.ingest.intake import Intake
from hopper.observe.metrics import HopperMetrics
from hopper.pipeline import build_chain
from hopper.pubsub import ChannelSink, render_raw
from hopper.pubsub.memory import MemoryChannels
from hopper.sinks import PendingWrite
from hopper.store.sqlite import SqliteEventStore
from hopper.testing import NOW_MS, FrozenClock, make_batch

PROTOBUF = {"message_format": "protobuf"}


class FlakyStore(SqliteEventStore):
    """A real SQLite store whose first commits fail as if the disk were unavailable."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures
        self.commits: list[int] = []

    def commit(self, writes: Sequence[PendingWrite]) -> list[list[Event]]:
        if self.failures:
            self.failures -= 1
            raise BackendUnavailable("disk went away")
        self.commits.append(len(writes))
        return super().commit(writes)


@pytest.fixture(autouse=True, params=[False, True], ids=["stages-in-writer", "stages-thread"])
def stages_thread(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run every test with both placements of the stages (see ``Intake``)."""
    monkeypatch.setattr(FlakyStore, "commit_waits_on_server", request.param)
    return bool(request.param)


def _intake(store: SqliteEventStore, **kwargs: Any) -> tuple[Intake, HopperMetrics]:
    settings = load_settings()
    metrics = HopperMetrics()
    clock = FrozenClock(NOW_MS)
    live = [ChannelSink("protos", MemoryChannels(), "protos", render_raw, metrics, **PROTOBUF)]
    chain = build_chain(settings, settings.pipeline.edge.stages, clock, metrics)
    intake = Intake(chain, [store], live, metrics, clock, **kwargs)
    return intake, metrics


def _submit_all(intake: Intake, payloads: list[bytes]) -> list[BatchOutcome]:
    outcomes: list[BatchOutcome] = []
    done = threading.Semaphore(0)

    def on_done(outcome: BatchOutcome) -> None:
        outcomes.append(outcome)
        done.release()

    for payload in payloads:
        ticket = intake.admit_blocking("test", len(payload), is_abandoned=lambda: False)
        intake.enqueue(payload, "test", on_done, ticket=ticket)
    for _ in payloads:
        assert done.acquire(timeout=10)
    return outcomes


def test_queued_payloads_are_committed_together(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "e.db", failures=0)
    store.migrate()
    intake, _ = _intake(store)
    # Queue before the writer starts, so it finds them all waiting: one transaction.
    payloads = [make_batch(10, start=n * 10) for n in range(20)]
    results: list[BatchOutcome] = []
    for payload in payloads:
        ticket = intake.try_admit("test", len(payload))
        assert ticket is not None
        intake.enqueue(payload, "test", results.append, ticket=ticket)
    intake.start()
    intake.stop()
    assert store.commits == [20]
    assert sum(o.accepted for o in results) == 200
    assert intake.depth == 0


def test_commit_is_retried_while_the_store_is_unavailable(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "e.db", failures=2)
    store.migrate()
    intake, metrics = _intake(store)
    intake.start()
    try:
        (outcome,) = _submit_all(intake, [make_batch(5)])
    finally:
        intake.stop()
    assert outcome.error is None
    assert outcome.accepted == 5
    assert store.count("reader_events") == 5
    assert intake.is_store_healthy
    labels = {"component": "store", "error_type": "BackendUnavailable"}
    assert metrics.registry.get_sample_value("component_errors_total", labels) == 2


def test_unexpected_store_error_fails_the_batch_without_killing_the_writer(tmp_path: Path) -> None:
    class BrokenOnce(FlakyStore):
        def commit(self, writes: Sequence[PendingWrite]) -> list[list[Event]]:
            if not self.commits:
                self.commits.append(-1)
                raise RuntimeError("bug")
            return super().commit(writes)

    store = BrokenOnce(tmp_path / "e.db", failures=0)
    store.migrate()
    intake, _ = _intake(store)
    intake.start()
    try:
        (first,) = _submit_all(intake, [make_batch(3)])
        assert intake.is_alive  # the writer survived the error...
        (second,) = _submit_all(intake, [make_batch(3)])
        assert intake.is_alive  # ...and goes on
    finally:
        intake.stop()
    assert first.error is not None and first.accepted == 0
    assert second.error is None and second.accepted == 3  # the resend is stored
    assert intake.is_alive is False  # and stop() does stop it


def test_one_payload_that_breaks_the_transaction_fails_alone(tmp_path: Path) -> None:
    from hopper.events import encode_batch
    from hopper.events._pb import events_pb2 as pb

    store = FlakyStore(tmp_path / "e.db", failures=0)
    store.migrate()
    # Without the validate stage, an event with no payload reaches the store and violates
    # its NOT NULL event_type: the store raises, and only that payload may fail.
    settings = load_settings(
        pipeline={"edge": {"stages": ["decode", "dedup"]}}, auth={"mode": "open"}
    )
    metrics = HopperMetrics()
    clock = FrozenClock(NOW_MS)
    chain = build_chain(settings, ["decode", "dedup"], clock, metrics)
    intake = Intake(chain, [store], [], metrics, clock)
    no_payload = encode_batch([pb.Event(username="u", device_id="d", app_time_ms=NOW_MS)])
    results: dict[int, BatchOutcome] = {}
    for n, payload in enumerate([make_batch(3), no_payload, make_batch(3, start=10)]):
        ticket = intake.try_admit("test", len(payload))
        assert ticket is not None
        intake.enqueue(payload, "test", lambda o, n=n: results.__setitem__(n, o), ticket=ticket)
    intake.start()
    intake.stop()
    assert results[0].accepted == 3 and results[0].error is None
    assert results[1].error is not None and results[1].accepted == 0
    assert results[2].accepted == 3 and results[2].error is None
    assert store.count("reader_events") == 6
    assert intake.depth == 0


def test_oversized_payload_is_recorded_as_too_large(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "e.db", failures=0)
    store.migrate()
    intake, _ = _intake(store, max_payload_bytes=500, error_raw_max_bytes=1024)
    intake.start()
    payload = make_batch(20)
    try:
        (outcome,) = _submit_all(intake, [payload])
    finally:
        intake.stop()
    assert outcome.reasons == {"too_large": 1}
    (error,) = store.errors()
    assert error.reason == "too_large" and error.source == "test"
    assert len(error.raw) == 1024
    assert error.raw == payload[:1024]
    assert (error.raw_size, error.raw_hash) == (len(payload), content_hash(payload))


def test_a_bug_in_the_stages_fails_its_payload_alone(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "e.db", failures=0)
    store.migrate()
    intake, metrics = _intake(store)
    poison = b"poison"
    run = intake._chain.run

    def buggy_run(payload: bytes, *args: object) -> object:
        if payload == poison:
            raise RuntimeError("a bug, not bad data")
        return run(payload, *args)  # type: ignore[arg-type]

    intake._chain.run = buggy_run  # type: ignore[method-assign,assignment]
    intake.start()
    try:
        outcomes = _submit_all(intake, [make_batch(5), poison, make_batch(5, start=5)])
    finally:
        intake.stop()
    failed = [o for o in outcomes if o.error is not None]
    assert len(failed) == 1 and failed[0].accepted == 0
    assert sorted(o.accepted for o in outcomes) == [0, 5, 5]
    assert store.count("reader_events") == 10
    assert intake.depth == 0
    errors = metrics.errors.labels(component="test", error_type="stages")._value.get()
    assert errors == 1


def test_the_stages_run_where_the_store_wants_them(tmp_path: Path, stages_thread: bool) -> None:
    store = FlakyStore(tmp_path / "e.db", failures=0)
    store.migrate()
    intake, _ = _intake(store)
    intake.start()
    try:
        names = {t.name for t in threading.enumerate()}
        assert ("hopper-stages" in names) is stages_thread
        assert _submit_all(intake, [make_batch(3)])[0].accepted == 3
    finally:
        intake.stop()
    assert not intake.is_alive
    assert intake._stager is None or not intake._stager.is_alive()
