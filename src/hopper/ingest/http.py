"""HTTP source: ``POST /v1/events`` with an ``application/x-protobuf`` EventBatch body."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hopper.events.model import WHOLE_PAYLOAD, Rejection, RejectReason
from hopper.ingest.intake import KEPT_PREFIX_BYTES, Intake

PROTOBUF_TYPES = frozenset(
    {
        "application/x-protobuf",
        "application/protobuf",
        "application/vnd.google.protobuf",
        "application/octet-stream",
    }
)


class HttpEventReceiver:
    """Receives event batches over HTTP; answers only after the durable commit."""

    source = "http"

    def __init__(
        self,
        intake: Intake,
        *,
        max_body_bytes: int,
        retry_after_secs: int,
        ack_timeout_secs: float = 30.0,
    ) -> None:
        self._intake = intake
        self._max_body = max_body_bytes
        self._retry_after = retry_after_secs
        self._ack_timeout = ack_timeout_secs

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
                body[:KEPT_PREFIX_BYTES],
            )
        if not self._intake.try_acquire():
            return JSONResponse(
                {"error": "busy: intake queue full, retry later"},
                status_code=503,
                headers={"Retry-After": str(self._retry_after)},
            )
        try:
            outcome = await asyncio.wait_for(
                self._intake.enqueue_and_wait(body, self.source, rejection=rejection),
                self._ack_timeout,
            )
        except TimeoutError:
            return JSONResponse(
                {
                    "error": f"not committed within {self._ack_timeout:g} s (store slow or "
                    "unavailable); resend later, duplicates are absorbed"
                },
                status_code=503,
                headers={"Retry-After": str(self._retry_after)},
            )
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
                return bytes(chunks[:KEPT_PREFIX_BYTES]), True
        return bytes(chunks), False


async def _prefix(request: Request) -> bytes:
    kept = bytearray()
    async for chunk in request.stream():
        if len(kept) < KEPT_PREFIX_BYTES:
            kept += chunk[: KEPT_PREFIX_BYTES - len(kept)]
    return bytes(kept)
