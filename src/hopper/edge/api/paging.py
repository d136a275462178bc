"""Cursor pagination and ETags, the same on every endpoint.

A list answers ``{"items": [...], "next": CURSOR | null}``; the cursor is the last item's
sort key, opaque to clients (URL-safe base64 of JSON) and checked when it comes back. A
report answers with an ``ETag`` (a hash of its body); ``If-None-Match`` with the same tag
gets ``304 Not Modified`` and no body.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import HTTPException, Request, Response

from hopper.edge.api.reports import Report

MAX_LIMIT = 500


def encode_cursor(key: Sequence[Any]) -> str:
    """Return the cursor after an item whose sort key is ``key``."""
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode().rstrip("=")


def decode_cursor(cursor: str | None, kinds: Sequence[type]) -> list[Any] | None:
    """Return the sort key a cursor holds (None: from the start); 400 if it is not ours."""
    if cursor is None:
        return None
    try:
        key = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        key = None
    if (
        not isinstance(key, list)
        or len(key) != len(kinds)
        or not all(
            isinstance(v, k) and not isinstance(v, bool) for v, k in zip(key, kinds, strict=True)
        )
    ):
        raise HTTPException(
            status_code=400, detail="not a cursor of this list: use the `next` of its answer"
        )
    return key


def page(items: list[dict[str, Any]], limit: int, key_of: Any) -> dict[str, Any]:
    """Answer a page: ``items`` holds up to ``limit + 1`` rows, the extra one means more."""
    more = len(items) > limit
    items = items[:limit]
    return {"items": items, "next": encode_cursor(key_of(items[-1])) if more and items else None}


def with_etag(request: Request, body: Any) -> Response:
    """Answer ``body`` as JSON with an ETag; 304 when the client has that version."""
    return Report.of(body).response(request)
