"""Local user accounts of the web pages: roles, scrypt password hashes, sessions.

Passwords are hashed with the standard library's scrypt (n=2^15, r=8, p=1: 32 MiB and
about 0.15 s here), so no new dependency is needed; the parameters are stored with each
hash, so they can be raised later without breaking existing accounts. Sessions are
server-side: the cookie holds 256 random bits, the table only their SHA-256, beside the
session's CSRF token. Deleting a user or changing a password ends their sessions.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

import sqlalchemy as sa

from hopper.errors import HopperError
from hopper.store.reference import ec_teachers
from hopper.store.users import hopper_sessions, hopper_ui_settings, hopper_users

USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,100}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # bounds the work a login can ask of scrypt
_SCRYPT = (2**15, 8, 1)
_MAXMEM = 64 * 1024 * 1024
_TOUCH_MS = 60_000  # last_seen_ms is written at most once a minute per session


class Role(StrEnum):
    """What a user may see: a teacher their classes, staff the school, IT the devices."""

    TEACHER = "teacher"
    STAFF = "staff"
    IT = "it"
    ADMIN = "admin"


class UserError(HopperError):
    """A user operation that cannot be done (bad name, weak password, exists, unknown)."""


@dataclass(frozen=True, slots=True)
class User:
    """An account, without its password hash."""

    username: str
    role: Role
    display_name: str | None
    teacher_id: str | None
    locale: str | None
    created_ms: int


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in user and their session's CSRF token."""

    user: User
    csrf_token: str


def hash_password(password: str) -> str:
    """Return the stored form of a password: ``scrypt$n$r$p$salt$hash`` (base64)."""
    n, r, p = _SCRYPT
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def password_matches(password: str, stored: str) -> bool:
    """Check a password against its stored hash, in constant time."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_MAXMEM,
            dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def check_password(password: str) -> None:
    """Raise ``UserError`` unless the password is long enough (and not absurdly long)."""
    if len(password) < MIN_PASSWORD:
        raise UserError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise UserError(f"a password has at most {MAX_PASSWORD} characters")


def new_password() -> str:
    """Return a random password to hand out (about 100 bits)."""
    return secrets.token_urlsafe(12)


@functools.cache
def _dummy_hash() -> str:
    # A hash of nothing anyone knows: checked when the username is unknown, so that a
    # login takes as long whether or not the account exists (made on first use, not import).
    return hash_password(secrets.token_urlsafe(16))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _session_hash(cookie: str) -> bytes:
    return hashlib.sha256(cookie.encode()).digest()


def _user(m: sa.RowMapping) -> User:
    return User(
        str(m["username"]),
        Role(str(m["role"])),
        m["display_name"],
        m["teacher_id"],
        m["locale"],
        int(m["created_ms"]),
    )


_USER_COLUMNS = (
    hopper_users.c.username,
    hopper_users.c.role,
    hopper_users.c.display_name,
    hopper_users.c.teacher_id,
    hopper_users.c.locale,
    hopper_users.c.created_ms,
)


class UserStore:
    """Users, sessions and UI settings in the node's store (any thread)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    # -- accounts --------------------------------------------------------------------------

    def add(
        self,
        username: str,
        role: Role,
        password: str,
        now_ms: int,
        *,
        display_name: str | None = None,
        teacher_id: str | None = None,
    ) -> User:
        """Create an account; ``UserError`` when the name is taken or not allowed."""
        if not USERNAME.match(username):
            raise UserError("a username is 1-100 letters, digits or . _ @ -")
        check_password(password)
        if self.get(username) is not None:
            raise UserError(f"user {username!r} exists already")
        with self._engine.begin() as conn:
            conn.execute(
                hopper_users.insert().values(
                    username=username,
                    role=role.value,
                    password_hash=hash_password(password),
                    display_name=display_name,
                    teacher_id=teacher_id,
                    locale=None,
                    created_ms=now_ms,
                    password_changed_ms=now_ms,
                )
            )
        return User(username, role, display_name, teacher_id, None, now_ms)

    def get(self, username: str) -> User | None:
        """Return the account ``username``, if there is one."""
        with self._engine.connect() as conn:
            row = (
                conn.execute(sa.select(*_USER_COLUMNS).where(hopper_users.c.username == username))
                .mappings()
                .first()
            )
        return None if row is None else _user(row)

    def all(self) -> list[User]:
        """Return every account, by username."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(*_USER_COLUMNS).order_by(hopper_users.c.username)
            ).mappings()
            return [_user(row) for row in rows]

    def remove(self, username: str) -> bool:
        """Delete an account and its sessions; False when there was none."""
        with self._engine.begin() as conn:
            conn.execute(hopper_sessions.delete().where(hopper_sessions.c.username == username))
            deleted = conn.execute(hopper_users.delete().where(hopper_users.c.username == username))
        return deleted.rowcount > 0

    def set_password(self, username: str, password: str, now_ms: int) -> bool:
        """Change a password and end the user's sessions; False when there is no such user."""
        check_password(password)
        with self._engine.begin() as conn:
            changed = conn.execute(
                hopper_users.update()
                .where(hopper_users.c.username == username)
                .values(password_hash=hash_password(password), password_changed_ms=now_ms)
            )
            conn.execute(hopper_sessions.delete().where(hopper_sessions.c.username == username))
        return changed.rowcount > 0

    def set_locale(self, username: str, locale: str | None) -> None:
        """Remember the user's language (None: follow the browser)."""
        with self._engine.begin() as conn:
            conn.execute(
                hopper_users.update()
                .where(hopper_users.c.username == username)
                .values(locale=locale)
            )

    def authenticate(self, username: str, password: str) -> User | None:
        """Return the user whose password this is, else None (in about the same time)."""
        stored: str | None = None
        if USERNAME.match(username) and len(password) <= MAX_PASSWORD:
            with self._engine.connect() as conn:
                stored = conn.execute(
                    sa.select(hopper_users.c.password_hash).where(
                        hopper_users.c.username == username
                    )
                ).scalar()
        if stored is None:
            password_matches(password[:MAX_PASSWORD], _dummy_hash())
            return None
        if not password_matches(password, stored):
            return None
        return self.get(username)

    def import_teachers(self, now_ms: int) -> list[tuple[User, str | None]]:
        """Make a teacher account for each teacher of ``ec_teachers`` that has none.

        An existing account with the teacher's username is linked to the teacher id (its
        password kept: None beside it); a new one gets a random password, returned once.
        """
        with self._engine.connect() as conn:
            teachers = conn.execute(
                sa.select(
                    ec_teachers.c.teacher_id, ec_teachers.c.username, ec_teachers.c.display_name
                ).order_by(ec_teachers.c.teacher_id)
            ).all()
        done: list[tuple[User, str | None]] = []
        for teacher_id, username, display_name in teachers:
            if not USERNAME.match(str(username)):
                continue
            existing = self.get(username)
            if existing is not None:
                if existing.teacher_id != teacher_id:
                    with self._engine.begin() as conn:
                        conn.execute(
                            hopper_users.update()
                            .where(hopper_users.c.username == username)
                            .values(teacher_id=teacher_id)
                        )
                    done.append((self.get(username) or existing, None))
                continue
            password = new_password()
            user = self.add(
                username,
                Role.TEACHER,
                password,
                now_ms,
                display_name=display_name,
                teacher_id=teacher_id,
            )
            done.append((user, password))
        return done

    # -- sessions --------------------------------------------------------------------------

    def start_session(self, username: str, now_ms: int) -> tuple[str, str]:
        """Open a session; return the cookie's value and the session's CSRF token."""
        cookie = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        with self._engine.begin() as conn:
            conn.execute(
                hopper_sessions.insert().values(
                    id_hash=_session_hash(cookie),
                    username=username,
                    csrf_token=csrf,
                    created_ms=now_ms,
                    last_seen_ms=now_ms,
                )
            )
        return cookie, csrf

    def session(self, cookie: str, now_ms: int, *, idle_ms: int, max_ms: int) -> Session | None:
        """Return the live session a cookie names (touching it), or None."""
        if not cookie or len(cookie) > 200:
            return None
        key = _session_hash(cookie)
        s = hopper_sessions
        with self._engine.connect() as conn:
            row = (
                conn.execute(
                    sa.select(s.c.csrf_token, s.c.created_ms, s.c.last_seen_ms, *_USER_COLUMNS)
                    .select_from(s.join(hopper_users, hopper_users.c.username == s.c.username))
                    .where(s.c.id_hash == key)
                )
                .mappings()
                .first()
            )
        if row is None:
            return None
        m = row
        if now_ms - int(m["created_ms"]) > max_ms or now_ms - int(m["last_seen_ms"]) > idle_ms:
            self.end_session(cookie)
            return None
        if now_ms - int(m["last_seen_ms"]) > _TOUCH_MS:
            with self._engine.begin() as conn:
                conn.execute(s.update().where(s.c.id_hash == key).values(last_seen_ms=now_ms))
        return Session(_user(m), str(m["csrf_token"]))

    def end_session(self, cookie: str) -> None:
        """Forget a session (logout)."""
        with self._engine.begin() as conn:
            conn.execute(
                hopper_sessions.delete().where(hopper_sessions.c.id_hash == _session_hash(cookie))
            )

    def purge_sessions(self, now_ms: int, *, idle_ms: int, max_ms: int) -> int:
        """Delete expired sessions; return how many."""
        s = hopper_sessions
        with self._engine.begin() as conn:
            result = conn.execute(
                s.delete().where(
                    sa.or_(s.c.created_ms < now_ms - max_ms, s.c.last_seen_ms < now_ms - idle_ms)
                )
            )
        return result.rowcount

    # -- UI settings -----------------------------------------------------------------------

    def setting(self, name: str) -> str | None:
        """Return a UI setting an admin stored, if any."""
        with self._engine.connect() as conn:
            value = conn.execute(
                sa.select(hopper_ui_settings.c.value).where(hopper_ui_settings.c.name == name)
            ).scalar()
        return None if value is None else str(value)

    def set_setting(self, name: str, value: str, now_ms: int) -> None:
        """Store a UI setting (replacing its value)."""
        t = hopper_ui_settings
        with self._engine.begin() as conn:
            conn.execute(t.delete().where(t.c.name == name))
            conn.execute(t.insert().values(name=name, value=value, updated_ms=now_ms))
