"""Languages of the pages: gettext catalogs read from ``.po`` files at start, and formatting.

Catalogs live in ``hopper/web/locales/<locale>/LC_MESSAGES/messages.po`` and are compiled
in memory when the app starts (no build step at install time). English is the source
language. One Jinja2 environment per locale, each with its own translations installed,
keeps concurrent requests in different languages apart. A request's locale is, first to
last: ``?lang=``, the user's own setting, the ``hopper_lang`` cookie, ``Accept-Language``,
then ``ui.default_locale``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from babel import Locale
from babel.dates import format_date, format_datetime
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal, format_percent
from babel.support import NullTranslations, Translations

from hopper.edge.processing.timezones import zone
from hopper.web import LOCALES_DIR

# The languages the pages speak; each has a catalog but English, the source language.
LOCALES: dict[str, str] = {"en": "English", "sl": "Slovenščina", "ar": "العربية"}
LANG_COOKIE = "hopper_lang"


def N_(message: str) -> str:  # noqa: N802 - gettext's name for "translate later"
    """Mark a message for the catalogs; the page translates it when it shows it."""
    return message


@dataclass(frozen=True)
class Language:
    """A locale the pages speak: its code, writing direction and Babel locale."""

    code: str
    name: str
    babel: Locale

    @property
    def direction(self) -> str:
        """Return ``rtl`` for right-to-left scripts, else ``ltr``."""
        return "rtl" if self.babel.character_order == "right-to-left" else "ltr"

    def number(self, value: float | int | None, digits: int = 0) -> str:
        """Format a number with this locale's separators (an en dash when unknown)."""
        if value is None:
            return "–"
        return format_decimal(
            round(value, digits), format=f"#,##0.{'0' * digits}" if digits else "#,##0",
            locale=self.babel,
        )  # fmt: skip

    def percent(self, share: float | None) -> str:
        """Format a share (0-1) as a percentage."""
        if share is None:
            return "–"
        return format_percent(share, locale=self.babel)

    def when(self, ms: int | None, time_zone: str = "UTC") -> str:
        """Format a time (Unix ms) as a short date and time in ``time_zone``."""
        if ms is None:
            return "–"
        moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
        return format_datetime(moment, "short", tzinfo=zone(time_zone), locale=self.babel)

    def day(self, iso_day: str | None) -> str:
        """Format an ISO day (YYYY-MM-DD) in this locale's medium form."""
        if not iso_day:
            return "–"
        try:
            return format_date(date.fromisoformat(iso_day), format="medium", locale=self.babel)
        except ValueError:
            return iso_day


LANGUAGES: dict[str, Language] = {
    code: Language(code, name, Locale.parse(code)) for code, name in LOCALES.items()
}


def load_translations() -> dict[str, NullTranslations]:
    """Read every catalog's ``.po`` file and compile it in memory."""
    loaded: dict[str, NullTranslations] = {}
    for code in LOCALES:
        po = LOCALES_DIR / code / "LC_MESSAGES" / "messages.po"
        if not po.is_file():
            loaded[code] = NullTranslations()
            continue
        with po.open("rb") as file:
            catalog = read_po(file, locale=code)
        buffer = io.BytesIO()
        write_mo(buffer, catalog)
        buffer.seek(0)
        loaded[code] = Translations(buffer)
    return loaded


def negotiate(
    query_lang: str | None,
    user_locale: str | None,
    cookies: Mapping[str, str],
    accept_language: str | None,
    default: str,
) -> str:
    """Pick the request's locale (see the module docstring for the order)."""
    for candidate in (query_lang, user_locale, cookies.get(LANG_COOKIE)):
        if candidate in LOCALES:
            return candidate
    for tag in _accepted(accept_language or ""):
        base = tag.split("-")[0]
        if base in LOCALES:
            return base
    return default


def _accepted(header: str) -> list[str]:
    """The languages of an Accept-Language header, best first (at most 20 read)."""
    weighted: list[tuple[float, int, str]] = []
    for n, part in enumerate(header[:500].split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        if tag:
            weighted.append((-quality, n, tag.strip().lower()))
    return [tag for _, _, tag in sorted(weighted)]


def format_helpers(language: Language) -> dict[str, Any]:
    """The template filters of a locale."""
    return {
        "num": language.number,
        "pct": language.percent,
        "day": language.day,
        "when": language.when,
    }
