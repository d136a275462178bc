"""Row checks of the e-content import: a source's values to a table's, or a named problem."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from hopper.config import load_settings
from hopper.edge.ecrows import RowChecker
from hopper.errors import ConfigError
from hopper.store.reference import table_shape


def _check(table: str, raw: Any, max_chars: int = 100) -> tuple[Any, str | None]:
    row, bad = RowChecker(table_shape(table), max_chars).check(raw, 7)
    return (None if row is None else row.values), (None if bad is None else str(bad))


def test_sql_and_json_spellings_of_a_value_are_the_same_row() -> None:
    checker = RowChecker(table_shape("ec_books"), 100)
    from_sql, _ = checker.check({"book_id": 42, "page_count": Decimal(310), "title": "A"}, 1)
    from_json, _ = checker.check({"book_id": "42", "page_count": "310", "title": "A"}, 1)
    assert from_sql is not None and from_json is not None
    assert from_sql.values == {"book_id": "42", "title": "A", "page_count": 310, "language": None}
    assert from_sql.row_hash == from_json.row_hash
    changed, _ = checker.check({"book_id": "42", "page_count": 311, "title": "A"}, 1)
    assert changed is not None and changed.row_hash != from_sql.row_hash


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (["b1", "t"], "ec_books row 7: is a list, not an object"),
        ({"title": "t"}, "ec_books row 7: has no book_id (the key)"),
        ({"book_id": ""}, "ec_books row 7: has no book_id (the key)"),
        ({"book_id": {"id": 1}}, "ec_books row 7: book_id is an object, not text"),
        ({"book_id": "b1", "page_count": True}, "ec_books book_id=b1: page_count is a boolean"),
        ({"book_id": "b1", "page_count": 2.5}, "ec_books book_id=b1: page_count is not a whole"),
        ({"book_id": "b1", "page_count": "1e3"}, "ec_books book_id=b1: page_count is not an int"),
        ({"book_id": "b1", "page_count": 2**31}, "ec_books book_id=b1: page_count does not fit"),
        ({"book_id": "b1", "title": 1.5}, "ec_books book_id=b1: title is a number, not text"),
        ({"book_id": "b1", "title": "x" * 101}, "ec_books book_id=b1: title is longer than"),
        ({"book_id": "b1", "title": "a\x00b"}, "ec_books book_id=b1: title contains the char"),
        ({"book_id": "b1", "title": "\ud800"}, "ec_books book_id=b1: title is not valid Unicode"),
    ],
)
def test_a_bad_value_is_named_by_column_never_by_value(raw: Any, problem: str) -> None:
    values, bad = _check("ec_books", raw)
    assert bad is not None and bad.startswith(problem)
    assert values is None


def test_defaults_and_required_columns() -> None:
    assert _check("ec_schools", {"school_id": "s1", "time_zone": ""})[0] == {
        "school_id": "s1",
        "name": None,
        "time_zone": "UTC",
    }
    assert _check("ec_schools", {"school_id": "s1", "time_zone": "Europe/Rome"})[1] is None
    _, bad = _check("ec_schools", {"school_id": "s1", "time_zone": "Europe/Atlantis"})
    assert (
        bad == "ec_schools school_id=s1: time_zone is not an IANA time zone name (e.g. Europe/Rome)"
    )
    _, bad = _check("ec_students", {"student_id": "st1", "display_name": "Ann"})
    assert bad == "ec_students student_id=st1: username is missing"
    _, bad = _check("ec_class_members", {"class_id": "c1", "student_id": "x" * 70})
    assert bad is None
    checker = RowChecker(table_shape("ec_class_members"), 100)
    assert checker.key_text(("c1", "x" * 70)) == f"class_id=c1 student_id={'x' * 61}..."
    assert checker.required == ("class_id", "student_id")
    assert RowChecker(table_shape("ec_students"), 100).required == ("student_id", "username")


def test_settings_name_what_is_wrong_with_the_sources() -> None:
    sql = {"kind": "sql", "name": "db", "url": "mysql://h/d", "tables": {"ec_books": "SELECT 1"}}
    with pytest.raises(ConfigError, match="ec_books is provided by both db and web"):
        web = {"kind": "http", "name": "web", "base_url": "http://x/", "tables": {"ec_books": "b"}}
        load_settings(ecimport={"sources": [sql, web]})
    with pytest.raises(ConfigError, match="source names must be unique: db"):
        load_settings(ecimport={"sources": [sql, {**sql, "tables": {"ec_schools": "SELECT 1"}}]})
    with pytest.raises(ConfigError, match=r"ecimport.sources.0.sql.tables.ec_book"):
        load_settings(ecimport={"sources": [{**sql, "tables": {"ec_book": "SELECT 1"}}]})
    with pytest.raises(ConfigError, match=r"ecimport.sources.0.http.base_url"):
        load_settings(ecimport={"sources": [{**sql, "kind": "http", "base_url": "ftp://x"}]})
    settings = load_settings(ecimport={"sources": [sql]})
    assert "mysql://h/d" not in repr(settings)  # the URL is a secret
