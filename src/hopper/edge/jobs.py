"""The edge node's jobs: the common ones (``hopper.jobs``) and the edge's own.

``hopper serve`` runs them all on the in-process scheduler; ``hopper job NAME`` runs one.
Each part that adds a job lists it here, beside its code in ``hopper.edge``.
"""

from __future__ import annotations

from hopper.jobs import JOBS, Job

EDGE_JOBS: dict[str, Job] = {
    **JOBS,
}
