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


def test_every_message_of_the_pages_is_translated_with_the_same_placeholders() -> None:
    import re
    from pathlib import Path

    from babel.messages.pofile import read_po
    from jinja2.ext import babel_extract

    import hopper.web

    web = Path(hopper.web.__file__).parent
    used: set[str] = set()
    for template in (web / "templates").rglob("*.html"):
        with template.open("rb") as f:
            for _, _, message, _ in babel_extract(f, ("_", "gettext"), [], {}):
                # A message with keyword arguments comes as (msgid, None, ...).
                msgid = message[0] if isinstance(message, tuple) else message
                if msgid:
                    used.add(msgid)
    assert len(used) > 100  # the extraction found the templates' messages
    placeholder = re.compile(r"%\(\w+\)s")
    catalogs = {}
    for locale in ("sl", "ar"):
        with (web / "locales" / locale / "LC_MESSAGES" / "messages.po").open("rb") as f:
            catalog = {m.id: m.string for m in read_po(f) if m.id}
        assert used <= set(catalog), f"{locale}: not in the catalog: {used - set(catalog)}"
        for msgid, text in catalog.items():
            assert text, f"{locale}: untranslated: {msgid!r}"
            assert set(placeholder.findall(text)) == set(placeholder.findall(msgid)), msgid
        catalogs[locale] = catalog
    # One language's text copied into another's catalog is not a translation.
    copied = [k for k, v in catalogs["ar"].items() if v == catalogs["sl"].get(k) and v != k]
    assert not copied, f"ar holds Slovenian text: {copied}"
