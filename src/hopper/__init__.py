"""Hopper: telemetry and learning analytics for education apps."""

__version__ = "0.1.0"
