"""The edge node's jobs: the common ones (``hopper.jobs``) and the edge's own.

``hopper serve`` runs them all on the in-process scheduler; ``hopper job NAME`` runs one.
Each part that adds a job lists it here, beside its code in ``hopper.edge``.
"""

from __future__ import annotations

from hopper.edge.ecimport import run_ec_import
from hopper.edge.processing import run_processing
from hopper.jobs import JOBS, Job

EDGE_JOBS: dict[str, Job] = {
    **JOBS,
    "ec-import": Job(
        "ec-import",
        "Import the reference data (students, classes, books...) from ecimport.sources.",
        lambda s: s.ecimport.interval_secs,
        run_ec_import,
    ),
    "process": Job(
        "process",
        "Derive the analytics tables (an_*) from the events new since the last run.",
        lambda s: s.processing.interval_secs,
        run_processing,
    ),
}
