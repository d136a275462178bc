"""Decode ``hopper.events.v1`` batches, keeping each event's exact raw bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import orjson
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from hopper.events._pb import events_pb2 as pb
from hopper.events.model import WHOLE_PAYLOAD, Event, Rejection, RejectReason

PbEvent = pb.Event
PbEventBatch = pb.EventBatch

_CASES = [case for case in PbEvent.DESCRIPTOR.oneofs_by_name["payload"].fields]

# Payload fields per oneof case, read once from the descriptor so decoding is a dict build.
PAYLOAD_FIELDS: dict[str, tuple[str, ...]] = {
    case.name: tuple(f.name for f in case.message_type.fields)  # type: ignore[union-attr]
    for case in _CASES
}
EVENT_TYPES: tuple[str, ...] = tuple(PAYLOAD_FIELDS)
# float32 fields per case: read back as float64 they carry noise (0.8 -> 0.800000011920929).
_FLOAT_FIELDS: dict[str, tuple[str, ...]] = {
    case.name: tuple(
        f.name
        for f in case.message_type.fields  # type: ignore[union-attr]
        if f.type == f.TYPE_FLOAT
    )
    for case in _CASES
}


_sha256 = hashlib.sha256
_dumps = orjson.dumps


def split_batch(payload: bytes) -> list[bytes]:
    """Split an ``EventBatch`` into its events' raw bytes; raise DecodeError if malformed."""
    return list(pb.RawEventBatch.FromString(payload).events)


def parse_event(index: int, raw: bytes) -> Event:
    """Parse one event's raw bytes; raise DecodeError if malformed."""
    return _event(index, raw, PbEvent.FromString(raw))


def _event(index: int, raw: bytes, msg: pb.Event) -> Event:
    # The hot path of ingest: positional arguments and no helper calls, on purpose.
    case = msg.WhichOneof("payload")
    payload: dict[str, Any] = {}
    if case is not None:
        sub = getattr(msg, case)
        payload = {name: getattr(sub, name) for name in PAYLOAD_FIELDS[case]}
        for name in _FLOAT_FIELDS[case]:
            payload[name] = float(f"{payload[name]:.7g}")
    return Event(
        index,
        raw,
        _sha256(raw).digest()[:16],
        msg.username,
        msg.device_id,
        msg.school_id,
        msg.app_time_ms,
        msg.app_version,
        msg.platform,
        msg.session_id,
        case,
        payload,
        _dumps(payload),
    )


def decode_batch(
    payload: bytes, *, max_events: int | None = None
) -> tuple[list[Event], list[Rejection]]:
    """Decode a batch into events and rejections; never raises for bad bytes.

    A batch of more than ``max_events`` events is refused whole before any event is
    parsed (``too_many_events``), so that a small body of many tiny events cannot make
    the server build millions of objects.
    """
    try:
        batch = pb.RawEventBatch.FromString(payload)
    except DecodeError as exc:
        return [], [
            Rejection(WHOLE_PAYLOAD, RejectReason.UNDECODABLE, f"not an EventBatch: {exc}", payload)
        ]
    count = len(batch.events)  # counted in C: no Python object per event yet
    if max_events is not None and count > max_events:
        return [], [
            Rejection(
                WHOLE_PAYLOAD,
                RejectReason.TOO_MANY_EVENTS,
                f"batch of {count} events is more than max_batch_events={max_events}; "
                "send it in smaller batches",
                payload,
            )
        ]
    rejections: list[Rejection] = []
    if len(UnknownFieldSet(batch)):
        # Bytes that are not events (field 1 with another wire type, other field numbers):
        # parsed as unknown fields, they would otherwise vanish without a trace.
        rejections.append(
            Rejection(
                WHOLE_PAYLOAD,
                RejectReason.UNDECODABLE,
                "the batch holds fields that are not events (EventBatch has only "
                "`repeated Event events = 1`); those bytes were not stored as events",
                payload,
            )
        )
    raws = list(batch.events)
    try:
        # Parsing the batch whole is ~4x cheaper per event than one parse per event; the
        # messages are the same as parsing each raw entry alone.
        messages = list(PbEventBatch.FromString(payload).events)
    except DecodeError:
        messages = []  # some entry is corrupt: parse one by one to keep its neighbours
    if len(messages) == len(raws):
        return [
            _event(i, raw, msg) for i, (raw, msg) in enumerate(zip(raws, messages, strict=True))
        ], rejections
    events: list[Event] = []
    for index, raw in enumerate(raws):
        try:
            events.append(parse_event(index, raw))
        except DecodeError as exc:
            rejections.append(
                Rejection(index, RejectReason.UNDECODABLE, f"not an Event: {exc}", raw)
            )
    return events, rejections


def encode_batch(events: Iterable[pb.Event | bytes]) -> bytes:
    """Encode events (messages or already-encoded bytes) as one ``EventBatch`` payload."""
    raw = pb.RawEventBatch()
    raw.events.extend(e if isinstance(e, bytes) else e.SerializeToString() for e in events)
    return raw.SerializeToString()
