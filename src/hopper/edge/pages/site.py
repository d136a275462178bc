"""The pages' shared machinery: the site (templates, users, throttle), a request's Page, forms.

``open_page(request)`` is the one door of every page, fragment and CSV: it finds the
session from its cookie (else ``LoginRequired``: a redirect to the login page), picks the
language, and builds the user's ``ViewScope``. Forms are read with a size bound and their
CSRF token checked against the session's (or, on the login form, against a cookie).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote

import jinja2
import sqlalchemy as sa
from babel.support import NullTranslations
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from hopper import __version__
from hopper.access import LoginThrottle, Session, User, UserStore
from hopper.clock import Clock
from hopper.config import HopperSettings
from hopper.edge.pages.i18n import (
    LANG_COOKIE,
    LANGUAGES,
    LOCALES,
    N_,
    Language,
    format_helpers,
    load_translations,
    negotiate,
)
from hopper.edge.pages.scope import ViewScope
from hopper.web import TEMPLATES_DIR

SESSION_COOKIE = "hopper_session"
LOGIN_CSRF_COOKIE = "hopper_login_csrf"
MAX_FORM_BYTES = 16 * 1024
MAX_FORM_FIELDS = 400
PAGE_SIZE = 50
HIDE_NAMES = "hide_student_names"
PSEUDONYM_KEY = "pseudonym_key"


class LoginRequired(Exception):  # noqa: N818 - a control-flow signal, handled as a redirect
    """No live session: the handler answers with a redirect to the login page."""


@dataclass
class Site:
    """What every page shares: settings, the store, users, throttle, one template env a locale."""

    settings: HopperSettings
    engine: sa.Engine
    users: UserStore
    throttle: LoginThrottle
    clock: Clock
    environments: dict[str, jinja2.Environment]
    node: Any  # hopper.edge.node.EdgeNode (typed loosely: the pages also run without one)
    translations: dict[str, NullTranslations]
    _key: bytes | None = None

    @classmethod
    def create(cls, settings: HopperSettings, engine: sa.Engine, clock: Clock, node: Any) -> Site:
        """Build the site: templates and catalogs are loaded once, here."""
        ui = settings.ui
        translations = load_translations()
        environments = {code: _environment(code, translations[code]) for code in LOCALES}
        throttle = LoginThrottle(
            window_ms=ui.login_window_secs * 1000,
            max_per_user=ui.login_max_failures_per_user,
            max_per_address=ui.login_max_failures_per_address,
            max_entries=ui.login_throttle_max_entries,
        )
        return cls(
            settings, engine, UserStore(engine), throttle, clock, environments, node, translations
        )

    def pseudonym_key(self) -> bytes:
        """The node's secret for student keys and pseudonyms (made once, kept in the store)."""
        if self._key is None:
            stored = self.users.setting(PSEUDONYM_KEY)
            if stored is None:
                stored = secrets.token_hex(32)
                self.users.set_setting(PSEUDONYM_KEY, stored, self.clock.now_ms())
            self._key = bytes.fromhex(self.users.setting(PSEUDONYM_KEY) or stored)
        return self._key

    def hides_names(self) -> bool:
        """Tell whether pages show pseudonyms (the admin's choice, else the config's)."""
        stored = self.users.setting(HIDE_NAMES)
        return self.settings.ui.hide_student_names if stored is None else stored == "1"

    def language_of(self, request: Request, user: User | None) -> Language:
        """The request's language."""
        code = negotiate(
            request.query_params.get("lang"),
            None if user is None else user.locale,
            request.cookies,
            request.headers.get("accept-language"),
            self.settings.ui.default_locale,
        )
        return LANGUAGES[code]

    def render(
        self,
        request: Request,
        template: str,
        values: Mapping[str, Any],
        *,
        language: Language,
        status: int = 200,
    ) -> HTMLResponse:
        """Render a template in ``language`` with the common values."""
        env = self.environments[language.code]
        body = env.get_template(template).render(
            {
                "lang": language,
                "languages": LOCALES,
                "version": __version__,
                "request_path": request.url.path,
                "query": dict(request.query_params),
                **format_helpers(language),
                **values,
            }
        )
        response = HTMLResponse(body, status_code=status)
        if request.query_params.get("lang") in LOCALES:
            response.set_cookie(
                LANG_COOKIE,
                str(request.query_params["lang"]),
                max_age=365 * 86_400,
                httponly=True,
                samesite="lax",
                secure=self.settings.ui.secure_cookies,
                path="/",
            )
        return response


def _environment(code: str, translations: NullTranslations) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        extensions=["jinja2.ext.i18n"],
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.install_gettext_translations(translations, newstyle=True)  # type: ignore[attr-defined]
    return env


@dataclass
class Page:
    """One request of a logged-in user: their session, scope and language."""

    site: Site
    request: Request
    session: Session
    scope: ViewScope
    language: Language

    @property
    def user(self) -> User:
        """Return the logged-in user."""
        return self.session.user

    @property
    def is_fragment(self) -> bool:
        """Tell whether htmx asked for a fragment (it sends ``HX-Request``)."""
        return self.request.headers.get("hx-request") == "true"

    @contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        """A connection to the store for this page's queries."""
        with self.site.engine.connect() as conn:
            yield conn

    def render(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        """Render a page (or fragment) template for this user."""
        return self.site.render(
            self.request,
            template,
            {
                "user": self.user,
                "scope": self.scope,
                "csrf": self.session.csrf_token,
                **values,
            },
            language=self.language,
            status=status,
        )

    def gettext(self, message: str) -> str:
        """Translate ``message`` into the page's language (for CSV headers and such)."""
        return str(self.site.translations[self.language.code].gettext(message))


def site_of(request: Request) -> Site:
    """Return the pages' site."""
    site: Site = request.app.state.site
    return site


def open_page(request: Request) -> Page:
    """Open a page for the request's session; raise ``LoginRequired`` without one."""
    site = site_of(request)
    reject_nul(request.query_params.values(), request.path_params.values())
    cookie = request.cookies.get(SESSION_COOKIE)
    ui = site.settings.ui
    session = (
        None
        if cookie is None
        else site.users.session(
            cookie,
            site.clock.now_ms(),
            idle_ms=ui.session_idle_secs * 1000,
            max_ms=ui.session_max_secs * 1000,
        )
    )
    if session is None:
        raise LoginRequired
    with site.engine.connect() as conn:
        scope = ViewScope.of(
            conn, session.user, hide_names=site.hides_names(), key=site.pseudonym_key()
        )
    return Page(site, request, session, scope, site.language_of(request, session.user))


async def read_form(request: Request) -> dict[str, str]:
    """Read an urlencoded form body (bounded); 400 when it is too big or not a form."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise HTTPException(status_code=415, detail=N_("Send the form as a web form."))
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(status_code=413, detail=N_("This form is too large."))
    try:
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(status_code=400, detail=N_("This form could not be read.")) from exc
    reject_nul([v for pair in pairs for v in pair])
    return dict(pairs)


def reject_nul(*values: Any) -> None:
    """Refuse NUL characters in parameters (PostgreSQL text cannot hold them): a 400."""
    for group in values:
        if any("\x00" in str(value) for value in group):
            raise HTTPException(status_code=400, detail=N_("This address could not be read."))


def check_csrf(form: Mapping[str, str], expected: str | None) -> None:
    """Raise 403 unless the form carries the expected CSRF token."""
    given = form.get("csrf", "")
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(
            status_code=403,
            detail=N_("This form has expired. Go back, reload the page, try again."),
        )


def safe_next(target: str | None) -> str:
    """Return a redirect target inside the pages (anything else goes home)."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/"


def login_url(request: Request) -> str:
    """The login page, coming back to this request's page afterwards."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return "/ui/login?next=" + quote(safe_next(here), safe="")


def redirect(url: str) -> Response:
    """A 303 See Other (after a form, as browsers expect)."""
    return Response(status_code=303, headers={"location": url})
