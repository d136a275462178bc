"""Web accounts: scrypt hashes, sessions that expire, teachers linked from ec_teachers."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from hopper.access import Role, UserError, UserStore
from hopper.access.users import hash_password, password_matches
from hopper.config import load_settings
from hopper.store import open_event_store
from hopper.store.engine import engine_for
from hopper.store.reference import ec_teachers
from hopper.store.users import hopper_sessions, hopper_users

NOW = 1_790_000_000_000
HOUR = 3_600_000


@pytest.fixture
def users(tmp_path: Path) -> UserStore:
    settings = load_settings(store={"sqlite_path": tmp_path / "e.db"})
    store = open_event_store(settings.store)
    store.migrate()
    store.close()
    return UserStore(engine_for(settings.store))


def test_a_password_hash_is_salted_and_checks_only_its_password() -> None:
    first, second = hash_password("a long password"), hash_password("a long password")
    assert first != second and first.startswith("scrypt$32768$8$1$")
    assert password_matches("a long password", first)
    assert not password_matches("a long passwore", first)
    assert not password_matches("a long password", "not$a$hash")


def test_accounts_are_checked_and_stored_without_their_password(users: UserStore) -> None:
    users.add("anna", Role.TEACHER, "secret words", NOW, teacher_id="t1")
    with pytest.raises(UserError):
        users.add("anna", Role.STAFF, "secret words", NOW)
    with pytest.raises(UserError):
        users.add("bad name!", Role.STAFF, "secret words", NOW)
    with pytest.raises(UserError):
        users.add("bob", Role.STAFF, "short", NOW)
    assert users.authenticate("anna", "secret words") is not None
    assert users.authenticate("anna", "wrong words!") is None
    assert users.authenticate("nobody", "secret words") is None
    with users._engine.connect() as conn:
        stored = conn.execute(sa.select(hopper_users.c.password_hash)).scalar()
    assert "secret words" not in str(stored)


def test_sessions_end_when_idle_too_long_at_logout_and_on_password_change(
    users: UserStore,
) -> None:
    users.add("anna", Role.STAFF, "secret words", NOW)
    cookie, csrf = users.start_session("anna", NOW)
    limits = {"idle_ms": 2 * HOUR, "max_ms": 24 * HOUR}
    session = users.session(cookie, NOW + HOUR, **limits)
    assert session is not None and session.csrf_token == csrf and session.user.username == "anna"
    assert users.session(cookie + "x", NOW, **limits) is None
    assert users.session(cookie, NOW + 4 * HOUR, **limits) is None  # idle too long: gone
    cookie, _ = users.start_session("anna", NOW)
    with users._engine.connect() as conn:
        stored = conn.execute(sa.select(hopper_sessions.c.id_hash)).scalars().all()
    assert all(cookie.encode() not in bytes(s) for s in stored)
    users.set_password("anna", "other words!", NOW)
    assert users.session(cookie, NOW, **limits) is None
    cookie, _ = users.start_session("anna", NOW)
    users.end_session(cookie)
    assert users.session(cookie, NOW, **limits) is None


def test_import_teachers_makes_accounts_once_and_links_existing_ones(users: UserStore) -> None:
    with users._engine.begin() as conn:
        conn.execute(
            ec_teachers.insert(),
            [
                {"teacher_id": "t1", "username": "novak", "display_name": "Ms Novak",
                 "school_id": "s", "row_hash": b"1", "changed_ms": NOW},
                {"teacher_id": "t2", "username": "horvat", "display_name": None,
                 "school_id": "s", "row_hash": b"2", "changed_ms": NOW},
            ],
        )  # fmt: skip
    users.add("horvat", Role.TEACHER, "own password", NOW)
    done = users.import_teachers(NOW)
    by_name = {user.username: (user, password) for user, password in done}
    assert by_name["novak"][0].teacher_id == "t1" and by_name["novak"][1]
    assert by_name["horvat"][0].teacher_id == "t2" and by_name["horvat"][1] is None
    assert users.authenticate("horvat", "own password") is not None
    assert users.import_teachers(NOW) == []
