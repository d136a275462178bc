"""HTTP sources: what every HTTP receiver does, once, and ``POST /v1/events`` on top of it.

``HttpReceiver`` checks the token before reading anything, reads the body within a size
and a time limit (a too-large body is recorded by a prefix, its size and hash), waits in
line for the intake, waits for the commit (503 + ``Retry-After`` when either takes too
long) and answers. A receiver of another format (the Sunbird telemetry API) subclasses it
and says which media types it takes and how it answers.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from hopper.access import Authenticator, AuthError, Principal, Scope
from hopper.access.authenticator import bearer_from_header
from hopper.events.model import WHOLE_PAYLOAD, Rejection, RejectReason
from hopper.ingest.base import BatchOutcome
from hopper.ingest.intake import Intake
from hopper.pipeline.stage import Origin

PROTOBUF_TYPES = frozenset(
    {
        "application/x-protobuf",
        "application/protobuf",
        "application/vnd.google.protobuf",
        "application/octet-stream",
    }
)


# A too-large body is read on up to this many times the limit (for its size and hash).
_DRAIN_FACTOR = 4


def client_key(request: Request) -> str:
    """Name the client a request comes from, for its fair share of the queue."""
    return request.client.host if request.client is not None else ""


def auth_error_response(exc: AuthError) -> Response:
    """Answer a request refused for its token (never echoing the token)."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    if exc.status == 503:
        headers["Retry-After"] = "1"
    return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)


async def authenticate_request(
    request: Request, authenticator: Authenticator, scope: Scope
) -> Principal:
    """Check the request's ``Authorization: Bearer`` token for ``scope``."""
    token = bearer_from_header(request.headers.get("authorization"))
    return await authenticator.authenticate(token, scope)


class HttpReceiver:
    """Receives payloads over HTTP for a topology; answers only after the durable commit."""

    source = "http"
    path = "/"
    scope = Scope.INGEST

    def __init__(
        self,
        intake: Intake,
        authenticator: Authenticator,
        *,
        max_body_bytes: int,
        retry_after_secs: int,
        admission_wait_secs: float = 2.0,
        body_timeout_secs: float = 30.0,
        ack_timeout_secs: float = 30.0,
        error_raw_max_bytes: int = 4096,
    ) -> None:
        self._intake = intake
        self._auth = authenticator
        self._max_body = max_body_bytes
        self._retry_after = retry_after_secs
        self._admission_wait = admission_wait_secs
        self._body_timeout = body_timeout_secs
        self._ack_timeout = ack_timeout_secs
        self._kept = error_raw_max_bytes

    def routes(self) -> Sequence[BaseRoute]:
        """Return the route this receiver serves."""
        return [Route(self.path, self.handle, methods=["POST"])]

    def media_problem(self, media_type: str) -> str | None:
        """Say what is wrong with a request's media type (None: it is accepted)."""
        raise NotImplementedError

    def answer(self, outcome: BatchOutcome, status: int, *, is_refused: bool) -> Response:
        """Answer a processed request (``is_refused``: the receiver refused the body)."""
        return JSONResponse(outcome.as_dict(), status_code=status)

    def _busy(self, message: str) -> Response:
        return JSONResponse(
            {"error": message}, status_code=503, headers={"Retry-After": str(self._retry_after)}
        )

    async def handle(self, request: Request) -> Response:
        """Handle one POST."""
        try:
            # Before the body is read: an anonymous client costs nothing but the headers.
            principal = await authenticate_request(request, self._auth, self.scope)
        except AuthError as exc:
            return auth_error_response(exc)
        client = client_key(request)
        origin = Origin(self.source, client, principal.schools)
        try:
            async with asyncio.timeout(self._body_timeout):
                body, rejection = await self._read_body(request)
        except TimeoutError:
            self._intake.count_refused("body_timeout")
            return JSONResponse(
                {"error": f"the body did not arrive within {self._body_timeout:g} s"},
                status_code=408,
                headers={"connection": "close"},
            )
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        status = 200
        if rejection is not None:
            status = 413
        elif (problem := self.media_problem(media_type)) is not None:
            status = 415
            rejection = Rejection(
                WHOLE_PAYLOAD, RejectReason.UNSUPPORTED_MEDIA_TYPE, problem, body
            ).bounded(self._kept)
            body = rejection.raw
        ticket = await self._intake.admit(client, len(body), self._admission_wait)
        if ticket is None:
            return self._busy("busy: intake queue full, retry later")
        try:
            outcome = await asyncio.wait_for(
                self._intake.enqueue_and_wait(
                    body, self.source, ticket=ticket, rejection=rejection, origin=origin
                ),
                self._ack_timeout,
            )
        except TimeoutError:
            return self._busy(
                f"not committed within {self._ack_timeout:g} s (store slow or "
                "unavailable); resend later, duplicates are absorbed"
            )
        if outcome.error is not None:
            response = self.answer(outcome, 503, is_refused=False)
            response.headers["Retry-After"] = str(self._retry_after)
            return response
        if (
            rejection is None
            and outcome.is_payload_rejected
            and not outcome.accepted + outcome.duplicates
        ):
            status = 400  # the body as a whole is not a payload of this format
        return self.answer(outcome, status, is_refused=rejection is not None)

    async def _read_body(self, request: Request) -> tuple[bytes, Rejection | None]:
        """Read the body up to the limit; past it, keep a prefix, the size and the hash."""
        declared = request.headers.get("content-length")
        limit = self._max_body
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._refuse(request, bytearray(), int(declared))
        chunks = bytearray()
        async for chunk in request.stream():
            chunks += chunk
            if len(chunks) > limit:
                return await self._refuse(request, chunks, None)
        return bytes(chunks), None

    async def _refuse(
        self, request: Request, read: bytearray, declared: int | None
    ) -> tuple[bytes, Rejection]:
        """Drain the rest of a too-large body, keeping only a prefix and a running hash."""
        kept = bytes(read[: self._kept])
        digest: hashlib._Hash | None = hashlib.sha256(read)
        size = len(read)
        async for chunk in request.stream():
            if len(kept) < self._kept:
                kept += chunk[: self._kept - len(kept)]
            size += len(chunk)
            if size > _DRAIN_FACTOR * self._max_body:
                # Reading on would only cost time: the connection is closed after the
                # answer, and the size and hash stay unknown.
                digest = None
                break
            assert digest is not None
            digest.update(chunk)
        rejection = Rejection(
            WHOLE_PAYLOAD,
            RejectReason.TOO_LARGE,
            f"body of {declared if declared is not None else size} bytes is larger than "
            f"max_body_bytes={self._max_body}",
            kept,
            size=size if digest is not None else declared or size,
            raw_hash=None if digest is None else digest.digest()[:16],
        )
        return kept, rejection


class HttpEventReceiver(HttpReceiver):
    """``POST /v1/events``: an ``EventBatch`` body (protobuf)."""

    source = "http"
    path = "/v1/events"

    def media_problem(self, media_type: str) -> str | None:
        """Accept the protobuf media types."""
        if media_type in PROTOBUF_TYPES:
            return None
        return f"content-type {media_type[:100] or '(none)'!r} is not application/x-protobuf"
