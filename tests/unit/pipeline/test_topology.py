"""Topologies declared in the config: checked with clear errors, built from registries."""

from __future__ import annotations

from typing import Any

import pytest

from hopper.config import load_settings
from hopper.pipeline import check_topologies
from hopper.testing import NOW_MS, FrozenClock, ListSink, make_batch, run_topology


def _problems(**pipeline: Any) -> list[str]:
    return check_topologies(load_settings(pipeline=pipeline, auth={"mode": "open"}))


def test_the_default_edge_topology_is_sound() -> None:
    assert check_topologies(load_settings()) == []


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        (
            {"edge": {"stages": ["decode", "enrich"]}},
            "pipeline.edge.stages: unknown stage 'enrich'",
        ),
        ({"edge": {"stages": ["validate"]}}, "the first stage must be 'decode'"),
        ({"edge": {"sinks": ["protos"]}}, "pipeline.edge.sinks: no durable sink"),
        ({"edge": {"sinks": ["store", "warehouse"]}}, "unknown sink 'warehouse'"),
        ({"edge": {"sinks": ["store", "store"]}}, "a sink is listed twice"),
        ({"edge": {"sources": ["ftp"]}}, "unknown source 'ftp'"),
        ({"edge": {"sources": ["http", "topic:x"]}}, "put them in separate topologies"),
        ({"edge": {"sinks": ["store", "topic:"]}}, "unknown sink 'topic:'"),
        (
            {"edge": {"sinks": ["store", "topic:edge-events"]}},
            "topic 'edge-events' is written but read by no topology here",
        ),
        (
            {
                "central": {
                    "sources": ["topic:edge-events"],
                    "stages": ["decode"],
                    "sinks": ["store"],
                }
            },
            "topic 'edge-events' is read but written by no topology here",
        ),
    ],
)
def test_unsound_topologies_are_named_clearly(pipeline: dict[str, Any], message: str) -> None:
    problems = _problems(**pipeline)
    assert any(message in p for p in problems), problems


def test_a_topic_read_in_the_same_config_or_declared_external_is_fine() -> None:
    edge = {"sinks": ["store", "topic:edge-events"]}
    central = {"sources": ["topic:edge-events"], "stages": ["decode", "dedup"], "sinks": ["store"]}
    assert _problems(edge=edge, central=central) == []
    settings = load_settings(
        pipeline={"edge": edge}, topics={"external": ["edge-events"]}, auth={"mode": "open"}
    )
    assert check_topologies(settings) == []


def test_tokens_need_the_authorize_stage() -> None:
    settings = load_settings(pipeline={"edge": {"stages": ["decode", "validate"]}})
    assert any("'authorize' is required" in p for p in check_topologies(settings))


def test_a_topology_reads_like_a_dataflow_test() -> None:
    # bytewax's test_filter, Hopper's way: payloads in, a list sink out.
    old = make_batch(2, app_time_ms=NOW_MS - 60 * 86_400_000)
    outcomes, (out,) = run_topology(
        ["decode", "validate", "dedup"], [make_batch(3), old], clock=FrozenClock(NOW_MS)
    )
    assert [o.accepted for o in outcomes] == [3, 0]
    assert outcomes[1].reasons == {"too_old": 2}
    assert isinstance(out, ListSink) and len(out.events) == 3
    assert [r.reason.value for r in out.rejections] == ["too_old", "too_old"]


def test_the_first_durable_sink_is_the_record_and_every_sink_gets_every_event() -> None:
    record, copy = ListSink("record", dedup=True), ListSink("copy")
    outcomes, _ = run_topology(
        ["decode"], [make_batch(3), make_batch(3)], sinks=[record, copy], clock=FrozenClock()
    )
    assert [(o.accepted, o.duplicates) for o in outcomes] == [(3, 0), (0, 3)]
    assert len(record.events) == 3
    assert len(copy.events) == 6  # duplicates still reach the other durable sinks
