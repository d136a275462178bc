"""The pages' languages: catalogs read from .po files, negotiation, RTL, formatting."""

from __future__ import annotations

from hopper.edge.pages.i18n import LANGUAGES, load_translations, negotiate


def test_the_catalogs_load_from_po_files_and_translate() -> None:
    translations = load_translations()
    assert translations["sl"].gettext("My classes") == "Moji razredi"
    assert translations["ar"].gettext("My classes") == "صفوفي"
    assert translations["en"].gettext("My classes") == "My classes"


def test_the_locale_comes_from_the_query_the_user_the_cookie_then_the_browser() -> None:
    assert negotiate("ar", "sl", {"hopper_lang": "en"}, "sl", "en") == "ar"
    assert negotiate(None, "sl", {"hopper_lang": "ar"}, "en", "en") == "sl"
    assert negotiate(None, None, {"hopper_lang": "ar"}, "sl", "en") == "ar"
    assert negotiate(None, None, {}, "de-DE, sl;q=0.8, ar;q=0.9", "en") == "ar"
    assert negotiate("xx", None, {"hopper_lang": "<script>"}, "q=;;,", "sl") == "sl"


def test_arabic_is_right_to_left_and_numbers_follow_the_locale() -> None:
    assert LANGUAGES["ar"].direction == "rtl" and LANGUAGES["sl"].direction == "ltr"
    assert LANGUAGES["sl"].number(1234.5, 1) == "1.234,5"
    assert LANGUAGES["en"].number(1234.5, 1) == "1,234.5"
    assert LANGUAGES["en"].number(None) == "–"
