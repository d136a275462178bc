"""How Hopper reports on itself: logs and metrics."""

from hopper.observe.metrics import ComponentMetrics, HopperMetrics

__all__ = ["ComponentMetrics", "HopperMetrics"]
