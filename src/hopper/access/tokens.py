"""Tokens: scopes, the principal a token stands for, and how secrets are made and checked.

A token reads ``hop_<id>_<secret>``. The id is public (it names the token in lists and
logs); only a SHA-256 hash of the secret is stored. Secrets are 192 random bits, so a fast
hash is enough: there is no password to guess.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from hopper.config import StoreSettings
from hopper.errors import HopperError
from hopper.store.tokens import StoredToken, TokenStore

PREFIX = "hop_"


class Scope(StrEnum):
    """What a token lets its holder do; ``admin`` implies every other scope."""

    INGEST = "ingest"
    STREAM = "stream"
    METRICS = "metrics"
    ADMIN = "admin"
    # The analytics API's audiences.
    APPS = "apps"  # the students' apps: a student's own summary, books, timeline
    PORTAL = "portal"  # the school portal: schools and classes
    DEVOPS = "devops"  # devices, ingest, errors, jobs
    EC = "ec"  # the e-content platform: which resources a student opened
    TEACHERS = "teachers"  # a teacher's classes and their students


_SCOPE_NAMES = frozenset(s.value for s in Scope)


class AuthError(HopperError):
    """A request without the right token; ``status`` is 401 (who are you) or 403 (not that)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason  # a metrics label: missing, malformed, unknown, revoked, scope


@dataclass(frozen=True, slots=True)
class Principal:
    """The holder of a verified token."""

    token_id: str
    name: str
    scopes: frozenset[Scope]
    schools: frozenset[str] | None  # None: any school
    subject: str | None = None  # "student:<username>" / "teacher:<teacher_id>": only theirs

    def has(self, scope: Scope) -> bool:
        """Tell whether the token grants ``scope``."""
        return scope in self.scopes or Scope.ADMIN in self.scopes

    def may_see(self, school_id: str) -> bool:
        """Tell whether the token covers events of ``school_id``."""
        return self.schools is None or school_id in self.schools

    @property
    def student(self) -> str | None:
        """Return the username of the one student this token is for, if bound to one."""
        kind, _, who = (self.subject or "").partition(":")
        return who if kind == "student" else None

    @property
    def teacher(self) -> str | None:
        """Return the id of the one teacher this token is for, if bound to one."""
        kind, _, who = (self.subject or "").partition(":")
        return who if kind == "teacher" else None


# Who everyone is when auth.mode = "open": every scope, every school.
OPEN_PRINCIPAL = Principal("open", "open mode", frozenset(Scope), None)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A new token: the row to store, and the secret to show once."""

    stored: StoredToken
    token: str


def hash_secret(secret: str) -> bytes:
    """Return the stored form of a secret."""
    return hashlib.sha256(secret.encode()).digest()


def issue_token(
    name: str,
    scopes: Iterable[Scope],
    schools: Iterable[str] | None,
    now_ms: int,
    *,
    subject: str | None = None,
) -> IssuedToken:
    """Make a new token with a random id and secret."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(24)
    stored = StoredToken(
        token_id,
        name,
        hash_secret(secret),
        tuple(sorted(Scope(s).value for s in scopes)),
        None if schools is None else tuple(sorted(set(schools))),
        now_ms,
        subject=subject,
    )
    return IssuedToken(stored, f"{PREFIX}{token_id}_{secret}")


def create_token(
    store: StoreSettings,
    name: str,
    scopes: Iterable[Scope],
    schools: Iterable[str] | None,
    now_ms: int,
    *,
    subject: str | None = None,
) -> IssuedToken:
    """Issue a token and store its hash in the node's store (migrating the store first)."""
    from hopper.store import open_event_store

    events = open_event_store(store)
    try:
        events.migrate()  # the token table comes with the store's schema
    finally:
        events.close()
    if subject is not None and subject.partition(":")[0] not in ("student", "teacher"):
        raise ValueError(f"subject {subject!r}: say student:USERNAME or teacher:TEACHER_ID")
    issued = issue_token(name, scopes, schools, now_ms, subject=subject)
    tokens = TokenStore.from_settings(store)
    try:
        tokens.add(issued.stored)
    finally:
        tokens.close()
    return issued


def parse_token(token: str) -> tuple[str, str] | None:
    """Split a token into (id, secret); None when it is not shaped like one of ours."""
    if not token.startswith(PREFIX) or len(token) > 200:
        return None
    token_id, sep, secret = token[len(PREFIX) :].partition("_")
    if not sep or not token_id or not secret:
        return None
    return token_id, secret


def secret_matches(secret: str, stored: StoredToken) -> bool:
    """Compare in constant time."""
    return hmac.compare_digest(hash_secret(secret), stored.secret_hash)


def principal_of(stored: StoredToken) -> Principal:
    """Return the principal a stored token stands for."""
    return Principal(
        stored.id,
        stored.name,
        frozenset(Scope(s) for s in stored.scopes if s in _SCOPE_NAMES),
        None if stored.schools is None else frozenset(stored.schools),
        stored.subject,
    )
