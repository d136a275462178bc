"""Screenshots of every page for every role, for a reviewer: PNGs and an index.html sheet.

Runs headless Chromium through Playwright (the ``dev`` extra) with the system's executable
(``HOPPER_CHROMIUM``, else ``chromium`` on the PATH), against a running node whose demo
accounts share one password. ``ROLE_PAGES`` is also the list the browser tests visit.
"""

from __future__ import annotations

import html
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hopper.errors import HopperError

STUDENT = "{student}"  # replaced by the first student of the class's students page
ROLE_PAGES: dict[str, tuple[str, ...]] = {
    "teacher": (
        "/ui/classes",
        "/ui/classes/{class}",
        "/ui/classes/{class}/live",
        "/ui/classes/{class}/live?view=table&sort=state",
        "/ui/classes/{class}/seats",
        "/ui/classes/{class}/students",
        STUDENT,
        "/ui/classes/{class}/books",
        "/ui/classes/{class}/flashcards",
        "/ui/classes/{class}/paths",
        "/ui/students",
        "/ui/about",
    ),
    "staff": (
        "/ui/school",
        "/ui/classes",
        "/ui/classes/{class}",
        "/ui/students",
        STUDENT,
        "/ui/devices",
        "/ui/about",
    ),
    "it": ("/ui/devices", "/ui/server", "/ui/about"),
    "admin": ("/ui/settings", "/ui/server", "/ui/school", "/ui/about"),
}
SIZES = ((1366, 768), (1024, 768))


def chromium_executable(explicit: str | None = None) -> str | None:
    """The Chromium to drive: the given one, ``HOPPER_CHROMIUM``, or ``chromium`` on PATH."""
    import os

    for candidate in (explicit, os.environ.get("HOPPER_CHROMIUM")):
        if candidate:
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


def login(page: Any, base: str, username: str, password: str) -> None:
    """Log in through the login form (as a person would)."""
    page.goto(f"{base}/ui/login")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("form.login button[type=submit]")
    page.wait_for_load_state()


def first_student_path(page: Any, base: str, class_id: str) -> str:
    """The path of the first student on a class's students page."""
    page.goto(f"{base}/ui/classes/{class_id}/students")
    href = page.locator("#students tbody th a").first.get_attribute("href")
    return str(href).split("?")[0]


def role_paths(page: Any, base: str, role: str, class_id: str) -> list[str]:
    """The paths a role's pages live at, with the class and a student filled in."""
    paths = []
    for path in ROLE_PAGES[role]:
        if path == STUDENT:
            paths.append(first_student_path(page, base, class_id))
        else:
            paths.append(path.replace("{class}", class_id))
    return paths


def take_screenshots(
    base: str,
    accounts: Mapping[str, tuple[str, str]],
    out: Path,
    *,
    class_id: str,
    chromium: str | None = None,
    locales: Sequence[str] = ("en", "ar"),
) -> Path:
    """Shoot every page of every role (``accounts``: role -> (username, password))."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise HopperError(
            "screenshots need Playwright: pip install 'hopper[dev]' (and Debian's chromium)"
        ) from exc
    executable = chromium_executable(chromium)
    if executable is None:
        raise HopperError("no Chromium found: apt-get install chromium, or set HOPPER_CHROMIUM")
    out.mkdir(parents=True, exist_ok=True)
    shots: list[tuple[str, str, str, str]] = []  # role, path, size, file
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True)
        try:
            for role, (username, password) in accounts.items():
                for locale in locales:
                    for width, height in SIZES:
                        context = browser.new_context(viewport={"width": width, "height": height})
                        page = context.new_page()
                        login(page, base, username, password)
                        for n, path in enumerate(role_paths(page, base, role, class_id)):
                            sep = "&" if "?" in path else "?"
                            page.goto(f"{base}{path}{sep}lang={locale}")
                            name = f"{role}-{locale}-{width}x{height}-{n:02d}.png"
                            page.screenshot(
                                path=str(out / name), full_page=True, animations="disabled"
                            )
                            shots.append((role, f"{path} ({locale})", f"{width}×{height}", name))
                        context.close()
        finally:
            browser.close()
    sheet = out / "index.html"
    rows = "\n".join(
        f'<figure><a href="{html.escape(f)}"><img src="{html.escape(f)}" width="320" '
        f'alt="{html.escape(role)} {html.escape(path)} {size}"></a>'
        f"<figcaption>{html.escape(role)} · {html.escape(path)} · {size}</figcaption></figure>"
        for role, path, size, f in shots
    )
    sheet.write_text(
        '<!doctype html><html lang="en"><meta charset="utf-8"><title>Hopper pages</title>'
        "<style>body{font-family:sans-serif}figure{display:inline-block;margin:6px;"
        "vertical-align:top;width:330px}</style>"
        f"<h1>Hopper pages: {len(shots)} screenshots</h1>\n{rows}\n",
        encoding="utf-8",
    )
    return sheet
