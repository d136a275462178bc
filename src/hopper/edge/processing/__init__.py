"""Incremental analytics: the derived ``an_*`` tables, computed from the events (issue 8)."""

from hopper.edge.processing.run import Processor, run_processing

__all__ = ["Processor", "run_processing"]
