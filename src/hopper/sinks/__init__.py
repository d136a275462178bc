"""Where records leave a topology: durable sinks, live sinks, batching sinks."""

from hopper.sinks.base import BatchingSink, DurableSink, LiveSink, PendingWrite, SinkBackpressure

__all__ = ["BatchingSink", "DurableSink", "LiveSink", "PendingWrite", "SinkBackpressure"]
