"""The component contract, checked on any stage or sink (Vector's component spec, as a test).

Stages: bad records never raise; every input record is passed, rejected (with a reason
code) or routed, once; the counters agree: received = sent + rejected (duplicates are
rejections with reason ``duplicate``), per stage.

Durable sinks: a commit answers one list per write, holding only that write's events;
committing the same writes again is safe (a deduplicating sink reports nothing new, the
others take the records again); the sink's counters, kept by the writer, agree.

Live sinks: ``offer`` never blocks and never raises, even when nothing consumes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from hopper.events.model import Event
from hopper.ingest.intake import Intake
from hopper.observe.metrics import HopperMetrics
from hopper.pipeline.chain import Chain
from hopper.pipeline.stage import ANY_ORIGIN, Origin, Stage
from hopper.pipeline.stages import Decode
from hopper.sinks.base import DurableSink, LiveSink, PendingWrite
from hopper.testing import FrozenClock, ListSource


def _sample(metrics: HopperMetrics, name: str, labels: dict[str, str]) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def _rejected(metrics: HopperMetrics, component: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in metrics.registry.collect():
        if family.name != "events_rejected":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels["component"] == component:
                out[sample.labels["reason"]] = sample.value
    return out


def assert_stage_compliance(
    stage: Stage[Any, Any],
    payloads: Sequence[bytes],
    origins: Sequence[Origin] = (ANY_ORIGIN,),
) -> dict[str, float]:
    """Run ``payloads`` (bad ones welcome) through decode then ``stage``; check the contract.

    Returns the stage's rejections by reason, so a test can also check what it refused.
    """
    metrics = HopperMetrics()
    decode = Decode() if stage.name != "decode" else None
    stages = [stage] if decode is None else [decode, stage]
    chain = Chain(stages, metrics)
    accounted = 0
    for origin in origins:
        for payload in payloads:
            records: list[Any] = [payload]
            if decode is not None:
                records = decode.process(records, origin).passed
            result = stage.process(records, origin)  # must not raise, whatever the input
            routed = sum(len(r) for r in result.routed.values())
            if decode is not None:
                assert len(records) == len(result.passed) + len(result.rejected) + routed, (
                    f"{stage.name}: {len(records)} in, "
                    f"{len(result.passed)} + {len(result.rejected)} + {routed} out"
                )
                indexes = [e.index for e in result.passed] + [r.index for r in result.rejected]
                assert len(indexes) == len(set(indexes)), f"{stage.name}: a record came out twice"
            assert all(r.reason and r.detail for r in result.rejected), "a rejection lacks a reason"
            chain.run(payload, origin)
            accounted += 1
    assert accounted, "no payload was run"
    received = _sample(metrics, "events_received_total", {"component": stage.name})
    sent = _sample(metrics, "events_sent_total", {"component": stage.name})
    rejected = _rejected(metrics, stage.name)
    assert received == sent + sum(rejected.values()), (
        f"{stage.name}: received {received} != sent {sent} + rejected {rejected}"
    )
    return rejected


def assert_durable_sink_compliance(
    sink: DurableSink,
    groups: Sequence[Sequence[PendingWrite]],
    *,
    dedups: bool,
) -> None:
    """Commit groups twice through a real writer; check answers, idempotency and counters."""
    for group in groups:
        stored = sink.commit(group)
        assert len(stored) == len(group), f"{sink.name}: one answer per write"
        for write, new in zip(group, stored, strict=True):
            assert all(any(e is w for w in write.events) for e in new), (
                f"{sink.name}: answered an event that was not in its write"
            )
        again = sink.commit(group)  # a redelivery after a crash
        for write, new in zip(group, again, strict=True):
            expected: list[Event] = [] if dedups else write.events
            assert [e.hash for e in new] == [e.hash for e in expected], (
                f"{sink.name}: a recommitted write answered {len(new)} new events"
            )
    # Through the writer: the sink's counters agree with what it answered.
    metrics = HopperMetrics()
    chain = Chain([Decode()], metrics)
    clock = FrozenClock()
    intake = Intake(chain, [sink], [], metrics, clock)
    payloads = [_batch_of(write.events) for group in groups for write in group if write.events]
    intake.start()
    try:
        outcomes = ListSource(payloads).run(intake)
    finally:
        intake.stop()
    received = _sample(metrics, "events_received_total", {"component": sink.name})
    sent = _sample(metrics, "events_sent_total", {"component": sink.name})
    rejected = _rejected(metrics, sink.name)
    assert received == sent + sum(rejected.values()), f"{sink.name}: counters disagree"
    assert received == sum(o.accepted + o.duplicates for o in outcomes)
    assert all(o.error is None for o in outcomes), [o.error for o in outcomes]


def assert_live_sink_compliance(sink: LiveSink, events: list[Event]) -> None:
    """``offer`` returns at once, even when flooded and before the sink is started."""
    started = time.perf_counter()
    for _ in range(1000):
        sink.offer([(events, 0)])  # must never raise nor wait for a consumer
    assert time.perf_counter() - started < 5.0, f"{sink.name}: offer blocked"
    sink.start()
    sink.stop()


def _batch_of(events: Sequence[Event]) -> bytes:
    from hopper.events.protobuf import encode_batch

    return encode_batch(e.raw for e in events)
