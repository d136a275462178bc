"""The canonical device event and its wire formats; imports no other Hopper part."""

from hopper.events.model import (
    RECORDED_REASONS,
    WHOLE_PAYLOAD,
    Event,
    Rejection,
    RejectReason,
    content_hash,
)
from hopper.events.protobuf import EVENT_TYPES, decode_batch, encode_batch

__all__ = [
    "EVENT_TYPES",
    "RECORDED_REASONS",
    "WHOLE_PAYLOAD",
    "Event",
    "RejectReason",
    "Rejection",
    "content_hash",
    "decode_batch",
    "encode_batch",
]
