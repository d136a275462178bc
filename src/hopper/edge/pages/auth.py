"""Login, logout and a user's preferences (their language).

The login form carries a CSRF token that must equal a cookie set with the form (there is
no session yet); every later form carries the session's own token. Failed logins are
counted per username and per client address (``LoginThrottle``); past the limit the form
answers 429 with ``Retry-After`` and checks no password at all.
"""

from __future__ import annotations

import logging
import secrets

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from hopper.edge.pages.i18n import LOCALES
from hopper.edge.pages.site import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    check_csrf,
    open_page,
    read_form,
    redirect,
    safe_next,
    site_of,
)

logger = logging.getLogger(__name__)

MAX_USERNAME = 100


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _login_form(
    request: Request, *, error: str | None = None, status: int = 200, username: str = ""
) -> Response:
    site = site_of(request)
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    language = site.language_of(request, None)
    response = site.render(
        request,
        "login.html",
        {
            "csrf": token,
            "error": error,
            "username": username[:MAX_USERNAME],
            "next": safe_next(request.query_params.get("next")),
        },
        language=language,
        status=status,
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="lax",
        secure=site.settings.ui.secure_cookies,
        path="/ui/",
    )
    return response


def login_form(request: Request) -> Response:
    """The login page."""
    return _login_form(request)


async def login(request: Request) -> Response:
    """Check a login; start a session and go on, or say why not."""
    site = site_of(request)
    form = await read_form(request)
    check_csrf(form, request.cookies.get(LOGIN_CSRF_COOKIE))
    username = form.get("username", "").strip()[:MAX_USERNAME]
    password = form.get("password", "")
    address = _client(request)
    now = site.clock.now_ms()
    wait = site.throttle.retry_after_secs(username, address, now)
    if wait:
        logger.warning("Refused a login: too many failures (throttled for %d s).", wait)
        response = _login_form(request, error="throttled", status=429, username=username)
        response.headers["retry-after"] = str(wait)
        return response
    user = await run_in_threadpool(site.users.authenticate, username, password)
    if user is None:
        site.throttle.failed(username, address, now)
        return _login_form(request, error="wrong", status=401, username=username)
    site.throttle.succeeded(username)
    cookie, _ = await run_in_threadpool(site.users.start_session, user.username, now)
    response = redirect(safe_next(form.get("next")))
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=site.settings.ui.session_max_secs,
        httponly=True,
        samesite="lax",
        secure=site.settings.ui.secure_cookies,
        path="/ui/",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/ui/")
    return response


async def logout(request: Request) -> Response:
    """End the session."""
    site = site_of(request)
    page = await run_in_threadpool(open_page, request)
    form = await read_form(request)
    check_csrf(form, page.session.csrf_token)
    cookie = request.cookies.get(SESSION_COOKIE, "")
    await run_in_threadpool(site.users.end_session, cookie)
    response = redirect("/ui/login")
    response.delete_cookie(SESSION_COOKIE, path="/ui/")
    return response


async def preferences(request: Request) -> Response:
    """Change the user's language (empty: follow the browser)."""
    site = site_of(request)
    page = await run_in_threadpool(open_page, request)
    form = await read_form(request)
    check_csrf(form, page.session.csrf_token)
    locale = form.get("locale") or None
    if locale is not None and locale not in LOCALES:
        locale = None
    await run_in_threadpool(site.users.set_locale, page.user.username, locale)
    return redirect(safe_next(form.get("next")))


def routes() -> list[BaseRoute]:
    """The login, logout and preferences routes."""
    return [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/preferences", preferences, methods=["POST"]),
    ]
