"""The web pages in real headless Chromium (Debian's, driven by Playwright), one browser a run.

A node serves a seeded school (reference data through the real import, a week of events
through real ingest, the real processing) on a loopback port; each test logs in through
the login form as a person would. Skips when Chromium is absent, unless
HOPPER_REQUIRE_SERVICES=1 (then fails): scripts/services installs it.
"""

from __future__ import annotations

import csv
import io
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from support.ui_school import PASSWORD, SeededSchool, school_settings, seed_school

from hopper.client import make_event
from hopper.edge import create_app
from hopper.edge.pages.screenshots import ROLE_PAGES, chromium_executable, login, role_paths
from hopper.edge.server import uvicorn_config
from hopper.events import encode_batch
from hopper.testing import bearer, create_token, free_port, wait_for_port

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

AXE = Path(__file__).resolve().parents[1] / "support" / "axe" / "axe-4.14.1.min.js"
ROLE_USERS = {"teacher": "teacher1", "staff": "staff", "it": "it", "admin": "admin"}
PROTOBUF = {"content-type": "application/x-protobuf"}


def _chromium() -> str:
    path = chromium_executable()
    problem = None
    if path is None or not Path(path).exists():
        problem = "Chromium is not installed (scripts/services installs Debian's chromium)"
    else:
        try:
            import playwright  # noqa: F401
        except ImportError:
            problem = "Playwright is missing: pip install -e '.[dev]'"
    if problem is not None:
        if os.environ.get("HOPPER_REQUIRE_SERVICES") == "1":
            pytest.fail(problem + "; HOPPER_REQUIRE_SERVICES=1 forbids skipping")
        pytest.skip(problem)
    assert path is not None
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for this module: the system's executable (no CDN download).

    Module-scoped, not pytest-playwright's session-wide one: the sync API keeps an event
    loop running while it lives, which later asyncio tests of the session would trip on.
    """
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=executable, headless=True)
        yield launched
        launched.close()


class Node:
    """A node serving the seeded school on a loopback port, in a thread of this process."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.settings = school_settings(
            tmp,
            server={"host": "127.0.0.1", "port": self.port},
            ui={"login_max_failures_per_user": 3},
            monitor={
                "heartbeat_interval_secs": 1.0,
                "idle_after_secs": 60.0,
                "roster_refresh_secs": 0.2,  # the school is imported after the node starts
            },
        )
        self.base = f"http://127.0.0.1:{self.port}"
        app = create_app(self.settings, run_jobs=False)
        self.server = uvicorn.Server(uvicorn_config(app, self.settings, app.state.guard))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.ingest = create_token(self.settings.store, "ingest")
        self.school: SeededSchool | None = None

    def start(self) -> None:
        self.thread.start()
        wait_for_port(self.port, 20)

        def post(batch: bytes, token: str) -> None:
            response = httpx.post(
                f"{self.base}/v1/events", content=batch, headers={**PROTOBUF, **bearer(token)}
            )
            assert response.status_code == 200, response.text

        self.post = post
        self.school = seed_school(self.settings, post, self.ingest, int(time.time() * 1000))
        time.sleep(0.5)  # the monitor's roster picks up the imported classes

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    _chromium()
    running = Node(tmp_path_factory.mktemp("web"))
    running.start()
    yield running
    running.stop()


@pytest.fixture
def as_role(node: Node, browser: Any) -> Iterator[Any]:
    """A function: a new page logged in as a role (a context of its own)."""
    contexts = []

    def open_as(role: str, **context_args: Any) -> Any:
        context = browser.new_context(viewport={"width": 1366, "height": 768}, **context_args)
        contexts.append(context)
        page = context.new_page()
        login(page, node.base, ROLE_USERS.get(role, role), PASSWORD)
        assert "/ui/login" not in page.url, f"login as {role} failed"
        return page

    yield open_as
    for context in contexts:
        context.close()


def _axe(page: Any) -> list[dict[str, Any]]:
    page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        "() => axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa']}})"
    )
    return [v for v in result["violations"] if v["impact"] in ("serious", "critical")]


def test_every_page_renders_for_every_role_with_no_serious_accessibility_violation(
    node: Node, as_role: Any
) -> None:
    problems = []
    for role in ROLE_PAGES:
        page = as_role(role, bypass_csp=True)  # axe is injected inline; the pages forbid that
        errors: list[str] = []
        page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
        for path in role_paths(page, node.base, role, "5a"):
            response = page.goto(f"{node.base}{path}")
            assert response is not None and response.status == 200, (role, path)
            assert page.locator("h1").count() == 1, (role, path)
            assert page.locator("html").get_attribute("lang") == "en"
            for violation in _axe(page):
                problems.append(
                    f"{role} {path}: {violation['id']} ({violation['impact']}) "
                    f"{[n['target'] for n in violation['nodes'][:3]]}"
                )
        assert not errors, (role, errors)
    assert not problems, "\n".join(problems)


def test_teacher_a_is_refused_class_b_on_pages_fragments_csv_and_the_live_stream(
    node: Node, as_role: Any
) -> None:
    page = as_role("teacher")
    request = page.request
    for suffix in ("", "/students", "/books", "/flashcards", "/paths", "/live", "/seats"):
        response = page.goto(f"{node.base}/ui/classes/5b{suffix}")
        assert response is not None and response.status == 403, suffix
        assert "You may not see this class." in page.content()
    fragment = {"hx-request": "true"}
    for path in ("/ui/classes/5b/students", "/ui/classes/5b/live/tiles", "/ui/classes/5b"):
        assert request.get(f"{node.base}{path}", headers=fragment).status == 403, path
    assert request.get(f"{node.base}/ui/classes/5b/students.csv").status == 403
    assert request.get(f"{node.base}/ui/classes/5b/live/stream").status == 403
    assert request.get(f"{node.base}/ui/school").status == 403
    assert request.get(f"{node.base}/ui/devices").status == 403
    # A student of class B, found by the staff account, is refused to teacher A.
    staff = as_role("staff")
    staff.goto(f"{node.base}/ui/classes/5b/students")
    href = staff.locator("#students tbody th a").first.get_attribute("href")
    assert request.get(f"{node.base}{href}").status == 403
    assert staff.request.get(f"{node.base}{href}").status == 200
    # The teacher's own lists hold only class A's students.
    page.goto(f"{node.base}/ui/students")
    shown = set(page.locator("#students tbody th a").all_inner_texts())
    assert node.school is not None
    assert shown and shown <= node.school.names_of_class("5a")


def _table(page: Any) -> list[list[str]]:
    rows = page.locator("#students tbody tr")
    return [
        [cell.strip() for cell in rows.nth(n).locator("th, td").all_inner_texts()]
        for n in range(rows.count())
    ]


def test_sort_and_filter_change_the_url_and_rows_and_the_csv_equals_the_table(
    node: Node, as_role: Any
) -> None:
    page = as_role("teacher")
    page.goto(f"{node.base}/ui/classes/5a/students?period=all")
    before = _table(page)
    names = [row[0] for row in before]
    assert names == sorted(names, key=str.casefold)
    page.get_by_role("link", name=re.compile("Reading minutes")).click()
    page.wait_for_url(re.compile(r"sort=minutes"))
    header = page.locator("th[aria-sort=descending]")
    assert "Reading minutes" in header.inner_text()
    minutes = [int(row[1].replace(",", "")) for row in _table(page)]
    assert minutes == sorted(minutes, reverse=True) and len(minutes) == len(before)
    needle = names[0][:2]
    page.fill("#q", needle)
    page.click(".filters button[type=submit]")
    page.wait_for_url(re.compile(r"q="))
    filtered = _table(page)
    assert filtered and all(needle.casefold() in row[0].casefold() for row in filtered)
    assert len(filtered) <= len(before)
    link = page.locator("a[download]").first.get_attribute("href")
    assert link is not None and "q=" in link and "sort=minutes" in link
    body = page.request.get(f"{node.base}{link}").text()
    rows = list(csv.reader(io.StringIO(body)))
    headers = [h.strip() for h in page.locator("#students thead th").all_inner_texts()]
    assert rows[0] == [re.sub(r"\s*[▲▼]$", "", h) for h in headers]
    shown = [[cell.replace(",", "") for cell in row] for row in filtered]
    days = rows[1:]
    assert [r[:7] for r in days] == [r[:7] for r in shown]
    assert len(days) == len(shown)


def test_the_keyboard_reaches_every_control(node: Node, as_role: Any) -> None:
    page = as_role("teacher")
    for path in ("/ui/classes/5a/students", "/ui/classes/5a/live", "/ui/classes/5a"):
        page.goto(f"{node.base}{path}")
        # Identities, not elements: the live tiles are swapped in again as they change.
        identity = (
            "e => e.tagName + '|' + (e.getAttribute('href') || e.name || e.id || '') + '|'"
            " + e.textContent.trim().slice(0, 40)"
        )
        stops = page.evaluate(
            f"""() => Array.from(document.querySelectorAll(
                     'a[href], button, input:not([type=hidden]), select, [tabindex="0"]'))
                   .filter(e => e.offsetParent !== null || e.classList.contains('skip'))
                   .map({identity})"""
        )
        controls = set(stops)
        reached: set[str] = set()
        for _ in range(len(stops) + 5):
            page.keyboard.press("Tab")
            reached.add(page.evaluate(f"() => ({identity})(document.activeElement)"))
        assert controls <= reached, (path, sorted(controls - reached))
        focus = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
        assert focus != "none", path


def test_the_rtl_locale_sets_dir_rtl_and_other_locales_translate(node: Node, as_role: Any) -> None:
    page = as_role("teacher")
    page.goto(f"{node.base}/ui/classes?lang=ar")
    html = page.locator("html")
    assert html.get_attribute("dir") == "rtl" and html.get_attribute("lang") == "ar"
    assert "صفوفي" in page.locator("h1").inner_text()
    page.goto(f"{node.base}/ui/classes?lang=sl")
    assert html.get_attribute("dir") == "ltr" and html.get_attribute("lang") == "sl"
    assert page.locator("h1").inner_text() == "Moji razredi"
    page.goto(f"{node.base}/ui/classes")  # the choice sticks (a cookie) until changed
    assert html.get_attribute("lang") == "sl"
    page.select_option("#locale", "ar")
    page.click("header form.inline button[type=submit] >> nth=0")
    page.wait_for_load_state()
    assert html.get_attribute("dir") == "rtl"
    page.select_option("#locale", "")  # back to the browser's language, for the other tests
    page.click("header form.inline button[type=submit] >> nth=0")
    page.wait_for_load_state()
    page.goto(f"{node.base}/ui/classes?lang=en")
    assert html.get_attribute("lang") == "en"


def test_logins_are_throttled_per_username(node: Node, browser: Any) -> None:
    context = browser.new_context()
    page = context.new_page()
    statuses = []
    for _ in range(4):
        page.goto(f"{node.base}/ui/login")
        page.fill("#username", "it")
        page.fill("#password", "not the password")
        with page.expect_response(re.compile(r"/ui/login$")) as answer:
            page.click("form.login button[type=submit]")
        statuses.append(answer.value.status)
    assert statuses == [401, 401, 401, 429]
    assert "Too many failed logins" in page.content()
    # Even the right password is refused while throttled, and says so.
    page.fill("#username", "it")
    page.fill("#password", PASSWORD)
    with page.expect_response(re.compile(r"/ui/login$")) as answer:
        page.click("form.login button[type=submit]")
    assert answer.value.status == 429 and int(answer.value.headers["retry-after"]) > 0
    context.close()


def test_forms_without_their_csrf_token_are_refused(node: Node, as_role: Any) -> None:
    page = as_role("admin")
    request = page.request
    form = {"content-type": "application/x-www-form-urlencoded"}
    answer = request.post(f"{node.base}/ui/settings", data="hide_names=1", headers=form)
    assert answer.status == 403 and "expired" in answer.text()
    answer = request.post(f"{node.base}/ui/logout", data="csrf=forged", headers=form)
    assert answer.status == 403
    page.goto(f"{node.base}/ui/settings")  # still logged in
    assert page.locator("h1").inner_text() == "Settings"
    fresh = httpx.post(
        f"{node.base}/ui/login",
        content="csrf=x&username=admin&password=y",
        headers=form,
    )
    assert fresh.status_code == 403  # no login-form cookie to match


def test_hidden_names_show_pseudonyms_on_pages_and_csv(node: Node, as_role: Any) -> None:
    admin = as_role("admin")
    admin.goto(f"{node.base}/ui/settings")
    admin.check("#names-hidden")
    admin.click("main button[type=submit]")
    try:
        page = as_role("teacher")
        page.goto(f"{node.base}/ui/classes/5a/students")
        names = page.locator("#students tbody th a").all_inner_texts()
        assert names and all(re.fullmatch(r"S-[0-9a-f]{6}", n) for n in names)
        body = page.request.get(f"{node.base}/ui/classes/5a/students.csv").text()
        assert node.school is not None
        assert not any(name in body for name in node.school.names_of_class("5a"))
        page.goto(f"{node.base}/ui/classes/5a/live")
        assert not any(name in page.content() for name in node.school.names_of_class("5a"))
    finally:
        admin.goto(f"{node.base}/ui/settings")
        admin.check("#names-shown")
        admin.click("main button[type=submit]")


def test_a_heartbeat_through_ingest_updates_its_tile_live_and_it_goes_stale(
    node: Node, as_role: Any
) -> None:
    assert node.school is not None
    page = as_role("teacher")
    page.goto(f"{node.base}/ui/classes/5a/live")
    assert page.locator("#live[data-stream]").count() == 1  # the monitor's board is on
    members = {st for c, st in node.school.reference["ec_class_members"] if c == "5a"}
    student = next(r for r in node.school.reference["ec_students"] if r[0] in members)
    tile = page.locator(".tablet", has_text="42 %")  # no other tablet reports 42 %
    heartbeat = make_event(
        "cam_status",
        {"foreground_app": "hopper.reader", "book_id": "book-007", "page": 17,
         "screen_on": True, "battery_pct": 42},
        username=student[1],
        device_id="tablet-live-test",
        school_id="school-001",
        app_time_ms=int(time.time() * 1000),
    )  # fmt: skip
    sent = time.monotonic()
    node.post(encode_batch([heartbeat]), node.ingest)
    tile.wait_for(timeout=2000)
    assert time.monotonic() - sent < 2.0
    assert student[2] in tile.inner_text() and "online" in tile.inner_text()
    assert "page 17 / 48" in tile.inner_text()
    # Heartbeats every 1 s here: two missed make it stale.
    tile.filter(has_text=re.compile("stale|offline")).wait_for(timeout=20_000)
