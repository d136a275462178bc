"""The spine shared by every pipeline: named stages in chains, assembled into topologies."""

from hopper.pipeline.chain import Chain, ChainResult
from hopper.pipeline.stage import ANY_ORIGIN, Origin, Stage, StageResult
from hopper.pipeline.topology import (
    STAGES,
    Resources,
    Topology,
    build_chain,
    build_topology,
    check_topologies,
)

__all__ = [
    "ANY_ORIGIN",
    "STAGES",
    "Chain",
    "ChainResult",
    "Origin",
    "Resources",
    "Stage",
    "StageResult",
    "Topology",
    "build_chain",
    "build_topology",
    "check_topologies",
]
