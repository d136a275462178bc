"""HTTP source: ``POST /v1/events`` with an ``application/x-protobuf`` EventBatch body."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hopper.events.model import WHOLE_PAYLOAD, Rejection, RejectReason
from hopper.ingest.intake import Intake

PROTOBUF_TYPES = frozenset(
    {
        "application/x-protobuf",
        "application/protobuf",
        "application/vnd.google.protobuf",
        "application/octet-stream",
    }
)
# How much of a refused oversized body is kept in reader_events_errors.
_KEPT_PREFIX = 1024


class HttpEventReceiver:
    """Receives event batches over HTTP; answers only after the durable commit."""

    source = "http"

    def __init__(self, intake: Intake, *, max_body_bytes: int, retry_after_secs: int) -> None:
        self._intake = intake
        self._max_body = max_body_bytes
        self._retry_after = retry_after_secs

    async def handle(self, request: Request) -> Response:
        """Handle one POST."""
        body, too_large = await self._read_body(request)
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        rejection = None
        status = 200
        if too_large:
            status = 413
            rejection = Rejection(
                WHOLE_PAYLOAD,
                RejectReason.TOO_LARGE,
                f"body larger than max_body_bytes={self._max_body}; first {len(body)} bytes kept",
                body,
            )
        elif media_type not in PROTOBUF_TYPES:
            status = 415
            rejection = Rejection(
                WHOLE_PAYLOAD,
                RejectReason.UNSUPPORTED_MEDIA_TYPE,
                f"content-type {media_type or '(none)'!r} is not application/x-protobuf",
                body[:_KEPT_PREFIX],
            )
        if not self._intake.try_acquire():
            return JSONResponse(
                {"error": "busy: intake queue full, retry later"},
                status_code=503,
                headers={"Retry-After": str(self._retry_after)},
            )
        outcome = await self._intake.enqueue_and_wait(body, self.source, rejection=rejection)
        if outcome.error is not None:
            return JSONResponse(
                outcome.as_dict(), status_code=503, headers={"Retry-After": str(self._retry_after)}
            )
        if rejection is None and any(r.index == WHOLE_PAYLOAD for r in outcome.rejected):
            status = 400  # the body as a whole is not an EventBatch
        return JSONResponse(outcome.as_dict(), status_code=status)

    async def _read_body(self, request: Request) -> tuple[bytes, bool]:
        """Read the body up to the limit; past it, keep only a prefix to record."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_body:
            return await _prefix(request), True
        chunks = bytearray()
        async for chunk in request.stream():
            chunks += chunk
            if len(chunks) > self._max_body:
                return bytes(chunks[:_KEPT_PREFIX]), True
        return bytes(chunks), False


async def _prefix(request: Request) -> bytes:
    kept = bytearray()
    async for chunk in request.stream():
        if len(kept) < _KEPT_PREFIX:
            kept += chunk[: _KEPT_PREFIX - len(kept)]
    return bytes(kept)
