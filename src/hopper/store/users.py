"""The web pages' tables: local users, their sessions, seat layouts and UI settings.

Passwords and session ids are stored as hashes only (``hopper.access.users`` makes and
checks them). A user of role ``teacher`` may carry the ``teacher_id`` of ``ec_teachers``,
which limits them to the classes of ``ec_class_teachers``.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.schema import CreateIndex, CreateTable

from hopper.store.schema import MILLIS, Migration

metadata = sa.MetaData()

hopper_users = sa.Table(
    "hopper_users",
    metadata,
    sa.Column("username", sa.Text, primary_key=True),
    sa.Column("role", sa.Text, nullable=False),  # teacher | staff | it | admin
    sa.Column("password_hash", sa.Text, nullable=False),  # scrypt$n$r$p$salt$hash
    sa.Column("display_name", sa.Text),
    sa.Column("teacher_id", sa.Text),  # ec_teachers.teacher_id: the teacher's classes
    sa.Column("locale", sa.Text),  # the user's chosen language; NULL: the browser's
    sa.Column("created_ms", MILLIS, nullable=False),
    sa.Column("password_changed_ms", MILLIS, nullable=False),
)

hopper_sessions = sa.Table(
    "hopper_sessions",
    metadata,
    sa.Column("id_hash", sa.LargeBinary, primary_key=True),  # SHA-256 of the cookie's value
    sa.Column("username", sa.Text, nullable=False),
    sa.Column("csrf_token", sa.Text, nullable=False),
    sa.Column("created_ms", MILLIS, nullable=False),
    sa.Column("last_seen_ms", MILLIS, nullable=False),
)
sessions_by_user = sa.Index("hopper_sessions_user", hopper_sessions.c.username)

# Where each student sits in a class's room: {student key: [row, column]} as JSON.
hopper_seat_layouts = sa.Table(
    "hopper_seat_layouts",
    metadata,
    sa.Column("class_id", sa.Text, primary_key=True),
    sa.Column("layout", sa.Text, nullable=False),
    sa.Column("updated_ms", MILLIS, nullable=False),
    sa.Column("updated_by", sa.Text, nullable=False),
)

# Settings an admin changes on the settings page (they win over the config file's).
hopper_ui_settings = sa.Table(
    "hopper_ui_settings",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_ms", MILLIS, nullable=False),
)

USER_TABLES = (hopper_users, hopper_sessions, hopper_seat_layouts, hopper_ui_settings)

USER_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        9,
        "web pages: hopper_users, hopper_sessions, hopper_seat_layouts, hopper_ui_settings",
        (*(CreateTable(t) for t in USER_TABLES), CreateIndex(sessions_by_user)),
    ),
)
