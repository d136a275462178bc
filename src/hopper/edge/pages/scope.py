"""ViewScope: what one logged-in user may see, applied the same way to every page.

A teacher sees the classes their linked ``teacher_id`` teaches (``ec_class_teachers``) and
those classes' students; staff and admins see every class and student; IT sees devices and
the server, no class. Every page, fragment, CSV and live stream asks this one object, so a
refusal is the same 403 everywhere. Students are named in URLs by a key (an HMAC of the
username with the node's own secret), never by their username; when an admin hides names,
the pages, CSVs and tiles show a pseudonym made from the same key.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from starlette.exceptions import HTTPException

from hopper.access import Role, User
from hopper.edge.pages.i18n import N_
from hopper.store.analytics import an_students
from hopper.store.reference import (
    ec_class_members,
    ec_class_teachers,
    ec_classes,
    ec_students,
)

# What each role may open besides "about" and their own preferences.
CAPABILITIES: dict[Role, frozenset[str]] = {
    Role.TEACHER: frozenset({"classes"}),
    Role.STAFF: frozenset({"classes", "school", "devices"}),
    Role.IT: frozenset({"devices", "server"}),
    Role.ADMIN: frozenset({"classes", "school", "devices", "server", "settings"}),
}


REFUSALS = {
    "this page": N_("You may not see this page."),
    "this class": N_("You may not see this class."),
    "this student": N_("You may not see this student."),
}


def refused(what: str = "this page") -> HTTPException:
    """A 403 that does not say whether the thing exists."""
    return HTTPException(status_code=403, detail=REFUSALS[what])


@dataclass
class ViewScope:
    """The classes and students one user may see, and how students are named to them."""

    user: User
    class_ids: frozenset[str] | None  # None: every class
    hide_names: bool
    key: bytes
    _keys: dict[str, str] | None = field(default=None, repr=False)

    @classmethod
    def of(cls, conn: sa.Connection, user: User, *, hide_names: bool, key: bytes) -> ViewScope:
        """Build the scope of ``user`` from the reference data."""
        if user.role == Role.TEACHER:
            ids: frozenset[str] | None = frozenset()
            if user.teacher_id is not None:
                ids = frozenset(
                    conn.execute(
                        sa.select(ec_class_teachers.c.class_id).where(
                            ec_class_teachers.c.teacher_id == user.teacher_id
                        )
                    ).scalars()
                )
        elif user.role == Role.IT:
            ids = frozenset()
        else:
            ids = None
        return cls(user, ids, hide_names, key)

    def may(self, capability: str) -> bool:
        """Tell whether the user's role opens pages of ``capability``."""
        return capability in CAPABILITIES[self.user.role]

    def require(self, capability: str) -> None:
        """Raise 403 unless the role opens ``capability``."""
        if not self.may(capability):
            raise refused()

    def may_read_class(self, class_id: str) -> bool:
        """Tell whether the user may see class ``class_id``."""
        if not self.may("classes"):
            return False
        return self.class_ids is None or class_id in self.class_ids

    def require_class(self, conn: sa.Connection, class_id: str) -> sa.RowMapping:
        """Return the class's row; 403 when out of scope, 404 when in scope but unknown."""
        if not self.may_read_class(class_id):
            raise refused("this class")
        row = (
            conn.execute(sa.select(ec_classes).where(ec_classes.c.class_id == class_id))
            .mappings()
            .first()
        )
        if row is None:
            raise HTTPException(status_code=404, detail=N_("No such class."))
        return row

    def classes(self) -> sa.Select[Any]:
        """Select the rows of ``ec_classes`` in scope."""
        query = sa.select(ec_classes).order_by(ec_classes.c.name, ec_classes.c.class_id)
        if not self.may("classes"):
            return query.where(sa.false())
        if self.class_ids is not None:
            query = query.where(ec_classes.c.class_id.in_(sorted(self.class_ids)))
        return query

    def usernames(self, class_id: str | None = None) -> sa.Select[Any]:
        """Select the usernames in scope (of one class when ``class_id`` is given)."""
        members = sa.select(ec_students.c.username).select_from(
            ec_class_members.join(
                ec_students, ec_students.c.student_id == ec_class_members.c.student_id
            )
        )
        if class_id is not None:
            if not self.may_read_class(class_id):
                raise refused("this class")
            return members.where(ec_class_members.c.class_id == class_id).distinct()
        if not self.may("classes"):
            return members.where(sa.false())
        if self.class_ids is not None:
            return members.where(ec_class_members.c.class_id.in_(sorted(self.class_ids))).distinct()
        # The whole school: students known to the reference data or seen in the events.
        both = sa.union(sa.select(ec_students.c.username), sa.select(an_students.c.username))
        return sa.select(both.subquery().c.username)

    def student_key(self, username: str) -> str:
        """The key that names a student in URLs (and makes their pseudonym)."""
        digest = hmac.new(self.key, username.encode(), hashlib.sha256).hexdigest()
        return digest[:12]

    def name(self, username: str, display_name: str | None) -> str:
        """How the pages name a student: their name, or a pseudonym when names are hidden."""
        if self.hide_names:
            return f"S-{self.student_key(username)[:6]}"
        return display_name or username

    def resolve_student(self, conn: sa.Connection, key: str) -> str:
        """Return the username a key names; 403 when no student in scope has it."""
        if self._keys is None:
            self._keys = {
                self.student_key(u): u
                for u in conn.execute(self.usernames()).scalars()
                if u is not None
            }
        username = self._keys.get(key)
        if username is None:
            raise refused("this student")
        return username
