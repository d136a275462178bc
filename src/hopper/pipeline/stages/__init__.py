"""Named stages of the pipeline (verbs, as in Vector's component spec)."""

from hopper.pipeline.stages.authorize import Authorize
from hopper.pipeline.stages.decode import Decode
from hopper.pipeline.stages.dedup import Dedup
from hopper.pipeline.stages.validate import Validate

__all__ = ["Authorize", "Decode", "Dedup", "Validate"]
