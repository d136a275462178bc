"""Authenticator: checks bearer tokens against the node's token table, cached in memory.

The table is read again every ``auth.cache_secs`` (so a token created or revoked by
``hopper token`` in another process takes effect within that time), and at once when an
unknown token id is presented (at most twice a second: a request with an unknown id waits
for the next reload, so a flood of made-up tokens cannot turn into a flood of queries, and
guessing is slow).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from hopper.access.tokens import (
    OPEN_PRINCIPAL,
    AuthError,
    Principal,
    Scope,
    parse_token,
    principal_of,
    secret_matches,
)
from hopper.config import AuthSettings, StoreSettings
from hopper.errors import HopperError
from hopper.observe.metrics import HopperMetrics
from hopper.store.tokens import StoredToken, TokenStore

logger = logging.getLogger(__name__)

# Browsers cannot set headers on a WebSocket: they offer this subprotocol (and plain
# "hopper", which the server selects), so the token never appears in a URL or access log.
SUBPROTOCOL = "hopper"
BEARER_SUBPROTOCOL_PREFIX = "hopper.bearer."
_MISS_REFRESH_SECS = 0.5


def bearer_from_subprotocols(offered: Sequence[str]) -> str | None:
    """Return the token a browser offered as a ``hopper.bearer.<token>`` subprotocol."""
    for protocol in offered:
        if protocol.startswith(BEARER_SUBPROTOCOL_PREFIX):
            return protocol[len(BEARER_SUBPROTOCOL_PREFIX) :]
    return None


def bearer_from_header(authorization: str | None) -> str | None:
    """Return the token of an ``Authorization: Bearer <token>`` header."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Authenticator:
    """Turns a presented token into a ``Principal``, or raises ``AuthError``."""

    def __init__(
        self, settings: AuthSettings, store: StoreSettings, metrics: HopperMetrics
    ) -> None:
        self.is_open = settings.mode == "open"
        self.is_metrics_open = settings.metrics_open or self.is_open
        self._cache_secs = settings.cache_secs
        self._store_settings = store
        self._metrics = metrics
        self._store: TokenStore | None = None
        self._tokens: dict[str, StoredToken] = {}
        self._loaded_at: float | None = None
        self._refreshing = asyncio.Lock()

    async def authenticate(self, token: str | None, scope: Scope) -> Principal:
        """Verify ``token`` and that it grants ``scope``."""
        if self.is_open:
            return OPEN_PRINCIPAL
        try:
            principal = await self._verify(token)
            if not principal.has(scope):
                raise AuthError(403, "scope", f"this token does not grant the {scope} scope")
        except AuthError as exc:
            self._metrics.auth_failures.labels(reason=exc.reason).inc()
            raise
        return principal

    async def authenticate_any(self, token: str | None, scopes: Sequence[Scope]) -> Principal:
        """Verify ``token`` and that it grants at least one of ``scopes``."""
        if self.is_open:
            return OPEN_PRINCIPAL
        try:
            principal = await self._verify(token)
            if not any(principal.has(scope) for scope in scopes):
                wanted = " or ".join(scopes)
                raise AuthError(403, "scope", f"this token grants none of the scopes {wanted}")
        except AuthError as exc:
            self._metrics.auth_failures.labels(reason=exc.reason).inc()
            raise
        return principal

    async def _verify(self, token: str | None) -> Principal:
        if token is None:
            raise AuthError(401, "missing", "a bearer token is required")
        parsed = parse_token(token)
        if parsed is None:
            raise AuthError(401, "malformed", "not a Hopper token (they start with hop_)")
        token_id, secret = parsed
        stored = await self._lookup(token_id)
        if stored is None or not secret_matches(secret, stored):
            raise AuthError(401, "unknown", "unknown token")
        if stored.is_revoked:
            raise AuthError(401, "revoked", f"token {stored.id} was revoked")
        return principal_of(stored)

    async def _lookup(self, token_id: str) -> StoredToken | None:
        age = None if self._loaded_at is None else time.monotonic() - self._loaded_at
        if age is None or age > self._cache_secs:
            await self._refresh()
        elif token_id not in self._tokens:
            # Maybe created a moment ago by `hopper token create`: reload, but at most
            # twice a second whatever is presented; an unknown id waits for that reload.
            if age < _MISS_REFRESH_SECS:
                await asyncio.sleep(_MISS_REFRESH_SECS - age)
            await self._refresh()
        return self._tokens.get(token_id)

    async def _refresh(self) -> None:
        loaded_at = self._loaded_at
        async with self._refreshing:
            if self._loaded_at != loaded_at:
                return  # another request refreshed while this one waited
            try:
                tokens = await asyncio.to_thread(self._load)
            except HopperError as exc:
                if self._loaded_at is None:
                    raise AuthError(503, "unavailable", "token store unavailable") from exc
                logger.warning("Could not reload tokens, using the cached ones: %s.", exc)
                self._loaded_at = time.monotonic()  # retry after cache_secs, not per request
                return
            self._tokens = {t.id: t for t in tokens}
            self._loaded_at = time.monotonic()

    def _load(self) -> list[StoredToken]:
        if self._store is None:
            self._store = TokenStore.from_settings(self._store_settings)
        try:
            return self._store.all()
        except HopperError:
            self._store.close()
            self._store = None
            raise

    def close(self) -> None:
        """Close the token store's connection."""
        if self._store is not None:
            self._store.close()
            self._store = None
