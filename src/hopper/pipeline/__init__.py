"""The spine shared by every pipeline: named stages assembled into topologies."""

from hopper.pipeline.stage import Stage, StageResult
from hopper.pipeline.topology import (
    EDGE_SINKS,
    EDGE_STAGES,
    EdgePipeline,
    build_edge_pipeline,
    check_edge_topology,
)

__all__ = [
    "EDGE_SINKS",
    "EDGE_STAGES",
    "EdgePipeline",
    "Stage",
    "StageResult",
    "build_edge_pipeline",
    "check_edge_topology",
]
