"""Sources: accept device batches and acknowledge them only after a durable commit."""

from hopper.ingest.base import BatchOutcome
from hopper.ingest.http import HttpEventReceiver
from hopper.ingest.intake import Intake
from hopper.ingest.websocket import WebSocketEventReceiver

__all__ = ["BatchOutcome", "HttpEventReceiver", "Intake", "WebSocketEventReceiver"]
