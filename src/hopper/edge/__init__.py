"""The school node: wires ingest, pipeline, store and channels into one app."""

from hopper.edge.app import create_app
from hopper.edge.node import EdgeNode

__all__ = ["EdgeNode", "create_app"]
