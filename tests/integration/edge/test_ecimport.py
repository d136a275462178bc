"""The e-content import against a real MariaDB, an HTTP server of the test's own, SQLite.

The node's store is the embedded SQLite and the real PostgreSQL; the MariaDB fixture is a
school's own schema (other table and column names), mapped by the queries in the config.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pymysql
import pytest
from conftest import require_service
from starlette.testclient import TestClient
from typer.testing import CliRunner

from hopper.cli import app as cli_app
from hopper.config import HopperSettings, load_settings
from hopper.edge import create_app
from hopper.edge.ecimport import EcImportError, run_ec_import
from hopper.edge.jobs import EDGE_JOBS
from hopper.testing import NOW_MS, FrozenClock, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

DAY_MS = 86_400_000
TOKEN = "s3cret-token-value"

# A school's own schema: other names than Hopper's, integer ids, a role column.
SCHOOL_SCHEMA = (
    "CREATE TABLE school (code VARCHAR(10) PRIMARY KEY, title VARCHAR(100), tz VARCHAR(50))",
    "CREATE TABLE person (id INT PRIMARY KEY, login VARCHAR(50), full_name VARCHAR(100),"
    " school_code VARCHAR(10), grade VARCHAR(10), role VARCHAR(10))",
    "CREATE TABLE klass (id INT PRIMARY KEY, school_code VARCHAR(10), label VARCHAR(50),"
    " grade VARCHAR(10))",
    "CREATE TABLE enrolment (klass_id INT, person_id INT, teaches BOOL)",
    "CREATE TABLE book (id VARCHAR(20) PRIMARY KEY, title VARCHAR(200), pages INT, lang CHAR(2))",
    "CREATE TABLE item (id VARCHAR(20), book VARCHAR(20), name VARCHAR(100), type VARCHAR(20))",
    "CREATE TABLE path (id VARCHAR(10), name VARCHAR(100))",
    "CREATE TABLE path_step (path VARCHAR(10), id VARCHAR(10), ord INT, name VARCHAR(100))",
    "INSERT INTO school VALUES ('s1', 'Scuola Uno', 'Europe/Rome'), ('s2', 'Escola Dois', NULL)",
    "INSERT INTO person VALUES (1, 'ann', 'Ann Smith', 's1', '5', 'student'),"
    " (2, 'bob', 'Bob Jones', 's1', '5', 'student'), (3, 'zoe', 'Zoë Ünal', 's2', '6', 'student'),"
    " (4, 'test-kid', 'Test Account', 's1', '5', 'student'),"
    " (10, 'mrs.t', 'Mrs T', 's1', NULL, 'teacher')",
    "INSERT INTO klass VALUES (100, 's1', '5A', '5'), (200, 's2', '6B', '6')",
    "INSERT INTO enrolment VALUES (100, 1, 0), (100, 2, 0), (200, 3, 0), (100, 10, 1)",
    "INSERT INTO book VALUES ('b1', 'The Hobbit', 310, 'en'), ('b2', 'Pinocchio', 192, 'it')",
    "INSERT INTO item VALUES ('r1', 'b1', 'Chapter 1 quiz', 'quiz'), ('r2', NULL, 'Map', 'image')",
    "INSERT INTO path VALUES ('lp1', 'Fractions')",
    "INSERT INTO path_step VALUES ('lp1', 'st1', 1, 'Halves'), ('lp1', 'st2', 2, 'Quarters')",
)

# The mapping: one query per table, columns named as Hopper's. A % is plain text.
QUERIES = {
    "ec_schools": "SELECT code AS school_id, title AS name, tz AS time_zone FROM school",
    "ec_students": "SELECT id AS student_id, login AS username, full_name AS display_name,"
    " school_code AS school_id, grade FROM person"
    " WHERE role = 'student' AND login NOT LIKE 'test%'",
    "ec_classes": "SELECT id AS class_id, school_code AS school_id, label AS name, grade"
    " FROM klass",
    "ec_class_members": "SELECT klass_id AS class_id, person_id AS student_id FROM enrolment"
    " WHERE NOT teaches",
    "ec_teachers": "SELECT id AS teacher_id, login AS username, full_name AS display_name,"
    " school_code AS school_id FROM person WHERE role = 'teacher'",
    "ec_class_teachers": "SELECT klass_id AS class_id, person_id AS teacher_id FROM enrolment"
    " WHERE teaches",
    "ec_books": "SELECT id AS book_id, title, pages AS page_count, lang AS language FROM book",
    "ec_resources": "SELECT id AS resource_id, book AS book_id, name AS title, type AS kind"
    " FROM item",
    "ec_learning_paths": "SELECT id AS lp_id, name AS title FROM path",
    "ec_lp_steps": "SELECT path AS lp_id, id AS step_id, ord AS position, name AS title"
    " FROM path_step",
}


@dataclass
class MariaDb:
    """A database of this test's own on the real MariaDB server."""

    url: str
    conn: Any

    def run(self, *statements: str) -> None:
        with self.conn.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)


@pytest.fixture
def mariadb() -> Iterator[MariaDb]:
    require_service("mariadb")
    name = f"hopper_ec_{uuid.uuid4().hex[:12]}"
    conn = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", autocommit=True)
    with conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    conn.select_db(name)
    yield MariaDb(f"mysql://root@127.0.0.1:3306/{name}", conn)
    with conn.cursor() as cursor:
        cursor.execute(f"DROP DATABASE `{name}`")
    conn.close()


@pytest.fixture
def school(mariadb: MariaDb) -> MariaDb:
    mariadb.run(*SCHOOL_SCHEMA)
    return mariadb


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The node's store settings: the embedded SQLite, or a fresh schema on PostgreSQL."""
    if request.param == "sqlite":
        return {"backend": "sqlite", "sqlite_path": tmp_path / "events.db"}
    return {"backend": "postgres", "postgres_url": request.getfixturevalue("postgres_url")}


@pytest.fixture
def sqlite_store(tmp_path: Path) -> dict[str, Any]:
    return {"backend": "sqlite", "sqlite_path": tmp_path / "events.db"}


def _settings(store: dict[str, Any], *sources: dict[str, Any], **ecimport: Any) -> HopperSettings:
    return load_settings(store=store, ecimport={"sources": list(sources), **ecimport})


def _sql(url: str, tables: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"kind": "sql", "name": "econtent", "url": url, "tables": tables or QUERIES, **extra}


def _query(settings: HopperSettings, sql: str) -> list[tuple[Any, ...]]:
    """Read the node's store directly (its own driver, no Hopper code)."""
    if settings.store.backend == "sqlite":
        with sqlite3.connect(settings.store.sqlite_path) as conn:
            return [tuple(row) for row in conn.execute(sql)]
    with psycopg.connect(settings.store.postgres_url.get_secret_value()) as conn:
        return [tuple(row) for row in conn.execute(sql)]


def _state(settings: HopperSettings, table: str) -> dict[str, Any]:
    columns = (
        "last_changed_ms, last_import_ms, last_success_ms, row_count, last_status, "
        "last_error, bad_rows, source"
    )
    rows = _query(settings, f"SELECT {columns} FROM ec_table_state WHERE table_name = '{table}'")
    assert len(rows) == 1, f"no state for {table}"
    return dict(zip(columns.split(", "), rows[0], strict=True))


class _AnyHash:
    """Equal to any 16-byte row hash."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, bytes) and len(other) == 16


ANY_HASH = _AnyHash()


def _health(settings: HopperSettings, clock: FrozenClock) -> tuple[int, dict[str, Any]]:
    with TestClient(create_app(settings, clock=clock, run_jobs=False)) as client:
        answer = client.get("/health")
    return answer.status_code, answer.json()


# --- SQL sources --------------------------------------------------------------------------


def test_the_queries_map_a_schools_own_schema(school: MariaDb, store: dict[str, Any]) -> None:
    settings = _settings(store, _sql(school.url))
    summary = run_ec_import(settings, FrozenClock(NOW_MS))
    assert summary.startswith("10 of 10 tables imported: ec_schools 2 rows (2 new")
    assert _query(settings, "SELECT * FROM ec_schools ORDER BY school_id") == [
        ("s1", "Scuola Uno", "Europe/Rome", ANY_HASH, NOW_MS),
        ("s2", "Escola Dois", "UTC", ANY_HASH, NOW_MS),  # NULL time zone: the default
    ]
    students = _query(
        settings,
        "SELECT student_id, username, display_name, school_id, grade FROM ec_students "
        "ORDER BY student_id",
    )
    assert students == [  # integer ids became text; the test account was filtered out
        ("1", "ann", "Ann Smith", "s1", "5"),
        ("2", "bob", "Bob Jones", "s1", "5"),
        ("3", "zoe", "Zoë Ünal", "s2", "6"),
    ]
    assert _query(settings, "SELECT class_id, student_id FROM ec_class_members ORDER BY 2") == [
        ("100", "1"),
        ("100", "2"),
        ("200", "3"),
    ]
    assert _query(settings, "SELECT teacher_id, username, school_id FROM ec_teachers") == [
        ("10", "mrs.t", "s1")
    ]
    assert _query(settings, "SELECT class_id, teacher_id FROM ec_class_teachers") == [("100", "10")]
    assert _query(settings, "SELECT * FROM ec_classes ORDER BY class_id")[0][:4] == (
        "100",
        "s1",
        "5A",
        "5",
    )
    assert _query(
        settings, "SELECT book_id, title, page_count, language FROM ec_books ORDER BY 1"
    ) == [("b1", "The Hobbit", 310, "en"), ("b2", "Pinocchio", 192, "it")]
    assert _query(settings, "SELECT resource_id, book_id, kind FROM ec_resources ORDER BY 1") == [
        ("r1", "b1", "quiz"),
        ("r2", None, "image"),
    ]
    assert _query(settings, "SELECT lp_id, title FROM ec_learning_paths") == [("lp1", "Fractions")]
    assert _query(
        settings, "SELECT lp_id, step_id, position, title FROM ec_lp_steps ORDER BY position"
    ) == [("lp1", "st1", 1, "Halves"), ("lp1", "st2", 2, "Quarters")]
    state = _state(settings, "ec_students")
    assert state == {
        "last_changed_ms": NOW_MS,
        "last_import_ms": NOW_MS,
        "last_success_ms": NOW_MS,
        "row_count": 3,
        "last_status": "ok",
        "last_error": None,
        "bad_rows": 0,
        "source": "econtent",
    }


def test_unchanged_rows_keep_changed_ms_and_changes_move_it(
    school: MariaDb, store: dict[str, Any]
) -> None:
    settings = _settings(store, _sql(school.url))
    clock = FrozenClock(NOW_MS)
    run_ec_import(settings, clock)
    school.run(
        "UPDATE person SET full_name = 'Ann Smith-Rossi' WHERE id = 1",  # changed
        "DELETE FROM person WHERE id = 2",  # gone from the source
        "INSERT INTO person VALUES (5, 'cleo', 'Cleo', 's2', '6', 'student')",  # new
    )
    clock.advance(DAY_MS)
    summary = run_ec_import(settings, clock)
    assert "ec_students 3 rows (1 new, 1 changed, 1 deleted)" in summary
    assert "ec_books 2 rows (0 new, 0 changed, 0 deleted)" in summary
    later = NOW_MS + DAY_MS
    assert _query(settings, "SELECT student_id, changed_ms FROM ec_students ORDER BY 1") == [
        ("1", later),
        ("3", NOW_MS),  # unchanged: keeps the time it last changed
        ("5", later),
    ]
    students, books = _state(settings, "ec_students"), _state(settings, "ec_books")
    assert (students["last_changed_ms"], students["last_import_ms"]) == (later, later)
    assert (books["last_changed_ms"], books["last_import_ms"]) == (NOW_MS, later)
    # Again with nothing changed at the source: nothing moves but the import time.
    clock.advance(DAY_MS)
    summary = run_ec_import(settings, clock)
    assert "ec_students 3 rows (0 new, 0 changed, 0 deleted)" in summary
    assert _state(settings, "ec_students")["last_changed_ms"] == later
    assert _state(settings, "ec_students")["last_import_ms"] == later + DAY_MS


def test_bad_rows_are_reported_by_table_and_key_and_never_stop_the_others(
    mariadb: MariaDb, sqlite_store: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    mariadb.run(
        "CREATE TABLE s (id VARCHAR(10), login VARCHAR(50), name VARCHAR(50), grade VARCHAR(5))",
        "INSERT INTO s VALUES ('s1', 'ann', 'Ann Secret-Name', '5'), ('s2', 'bob', 'Bob', '5'),"
        " ('s3', 'cat', 'Cat', '5')",
        "CREATE TABLE b (id VARCHAR(10), title VARCHAR(50), pages VARCHAR(20), tz VARCHAR(40))",
        "INSERT INTO b VALUES ('b1', 'Good', '120', NULL), ('b2', 'Words', 'many', NULL),"
        " ('b3', 'Huge', '99999999999', NULL), (NULL, 'No key', '3', NULL), ('b4', 'Ok', '', NULL)",
        "CREATE TABLE sc (id VARCHAR(10), tz VARCHAR(40))",
        "INSERT INTO sc VALUES ('s1', 'Mars/Olympus_Mons'), ('s2', 'America/Sao_Paulo')",
    )
    tables = {
        "ec_students": "SELECT id AS student_id, login AS username, name AS display_name, grade"
        " FROM s ORDER BY id, login",
        "ec_books": "SELECT id AS book_id, title, pages AS page_count FROM b"
        " ORDER BY id IS NULL, id",
        "ec_schools": "SELECT id AS school_id, tz AS time_zone FROM sc",
    }
    settings = _settings(sqlite_store, _sql(mariadb.url, tables))
    clock = FrozenClock(NOW_MS)
    run_ec_import(settings, clock)
    # s1 turns bad (no username), s3 takes bob's username, s4 repeats the key of s2.
    mariadb.run(
        "UPDATE s SET login = NULL, name = 'Ann Renamed' WHERE id = 's1'",
        "UPDATE s SET login = 'bob' WHERE id = 's3'",
        "INSERT INTO s VALUES ('s2', 'dup', 'Dup', '5'), ('s5', 'eve', 'Eve', '5')",
    )
    clock.advance(DAY_MS)
    with caplog.at_level(logging.INFO):
        summary = run_ec_import(settings, clock)
    assert "ec_students 4 rows (1 new, 0 changed, 0 deleted), 3 bad rows skipped" in summary
    assert "ec_students student_id=s1: username is missing" in summary
    assert "ec_students student_id=s2: repeats the key of an earlier row" in summary
    assert "ec_students student_id=s3: repeats the username of another row" in summary
    assert "ec_books book_id=b2: page_count is not an integer" in summary
    assert "ec_books book_id=b3: page_count does not fit in a 32-bit integer" in summary
    assert "ec_books row 5: has no book_id (the key)" in summary
    assert "ec_schools school_id=s1: time_zone is not an IANA time zone name" in summary
    # A bad row whose key is known keeps its previous version; the good ones are imported.
    assert _query(settings, "SELECT student_id, username, display_name FROM ec_students") == [
        ("s1", "ann", "Ann Secret-Name"),
        ("s2", "bob", "Bob"),
        ("s3", "cat", "Cat"),
        ("s5", "eve", "Eve"),
    ]
    assert _query(settings, "SELECT book_id, page_count FROM ec_books ORDER BY 1") == [
        ("b1", 120),
        ("b4", None),  # an empty string is no number: NULL
    ]
    assert _query(settings, "SELECT school_id, time_zone FROM ec_schools") == [
        ("s2", "America/Sao_Paulo")
    ]
    state = _state(settings, "ec_students")
    assert (state["last_status"], state["bad_rows"]) == ("partial", 3)
    assert state["last_error"].startswith("3 bad rows skipped: ec_students student_id=s1")
    # Values never reach the log, only keys; the good rows' names neither.
    logged = caplog.text
    assert "skipped a bad row: ec_students student_id=s1: username is missing" in logged
    assert "Renamed" not in logged and "Dup" not in logged and "Secret" not in logged


def test_a_source_that_is_down_keeps_the_previous_data_and_fails_the_job(
    school: MariaDb, store: dict[str, Any]
) -> None:
    clock = FrozenClock(NOW_MS)
    run_ec_import(_settings(store, _sql(school.url)), clock)
    before = _query(_settings(store), "SELECT * FROM ec_students ORDER BY student_id")
    # The same source, now on a port where nothing answers (credentials in the URL).
    down = _sql(f"mysql://reader:pa55word@127.0.0.1:{free_port()}/econtent")
    settings = _settings(store, down)
    clock.advance(DAY_MS)
    runner = CliRunner()
    env = {"HOPPER_CONFIG": "", "HOPPER_ECIMPORT__SOURCES": json.dumps([down])}
    env |= {f"HOPPER_STORE__{k.upper()}": str(v) for k, v in store.items()}
    result = runner.invoke(cli_app, ["job", "ec-import"], env=env)
    assert result.exit_code == 1
    message = result.output
    assert message.startswith(
        "error: 0 of 10 tables imported: ec_schools failed, previous data kept"
    )
    assert "cannot connect to source econtent" in message
    assert "ec_students failed, previous data kept: not tried after ec_schools" in message
    assert "pa55word" not in message
    assert _query(settings, "SELECT * FROM ec_students ORDER BY student_id") == before
    state = _state(settings, "ec_students")
    assert state["last_status"] == "failed"
    assert "cannot connect to source econtent" in state["last_error"]
    assert state["last_success_ms"] == NOW_MS and state["row_count"] == 3
    assert state["last_changed_ms"] == NOW_MS  # the data did not change
    status, body = _health(settings, clock)
    assert status == 200 and body["status"] == "warn"  # degraded, not failed
    check = body["checks"]["ec_import"]
    assert check["status"] == "warn" and body["ec_import_ok"] == 0
    assert "ec_students" in check["failed_tables"] and len(check["failed_tables"]) == 10
    assert "cannot connect to source econtent" in check["output"]


def test_a_bad_query_fails_its_table_only(school: MariaDb, sqlite_store: dict[str, Any]) -> None:
    clock = FrozenClock(NOW_MS)
    run_ec_import(_settings(sqlite_store, _sql(school.url)), clock)
    queries = {
        **QUERIES,
        "ec_books": "SELECT id AS book_id FROM no_such_table",
        "ec_teachers": "SELECT id AS teacher_id FROM person",  # no username column
    }
    settings = _settings(sqlite_store, _sql(school.url, queries))
    clock.advance(DAY_MS)
    with pytest.raises(EcImportError) as raised:
        run_ec_import(settings, clock)
    summary = str(raised.value)
    assert summary.startswith("8 of 10 tables imported")
    assert "ec_books failed, previous data kept: the query of source econtent for ec_books" in (
        summary
    )
    assert "doesn't exist" in summary
    assert "ec_teachers failed, previous data kept: the query of source econtent for " in summary
    assert "returns no column username" in summary
    assert "ec_resources 2 rows (0 new, 0 changed, 0 deleted)" in summary
    assert len(_query(settings, "SELECT * FROM ec_books")) == 2
    assert _state(settings, "ec_books")["last_status"] == "failed"
    assert _state(settings, "ec_resources")["last_status"] == "ok"


def test_a_huge_answer_is_cut_at_max_rows(mariadb: MariaDb, sqlite_store: dict[str, Any]) -> None:
    # MariaDB's sequence engine: three million rows that exist nowhere, sent as fast as asked.
    tables = {"ec_books": "SELECT seq AS book_id, seq AS title FROM seq_1_to_3000000"}
    settings = _settings(sqlite_store, _sql(mariadb.url, tables), max_rows=500, batch_rows=100)
    started = time.monotonic()
    with pytest.raises(EcImportError, match=r"more than ecimport.max_rows \(500\) rows"):
        run_ec_import(settings, FrozenClock(NOW_MS))
    assert time.monotonic() - started < 5  # not the three million
    assert _query(settings, "SELECT count(*) FROM ec_books") == [(0,)]


def test_an_sqlite_source_beside_an_http_source(
    tmp_path: Path, sqlite_store: dict[str, Any], api: Api
) -> None:
    source_db = tmp_path / "econtent.db"
    with sqlite3.connect(source_db) as conn:
        conn.execute("CREATE TABLE users (uid TEXT, nick TEXT)")
        conn.execute("INSERT INTO users VALUES ('u1', 'ann'), ('u2', 'bob')")
    api.tables["books"] = [{"book_id": "b1", "title": "One", "page_count": 10, "extra": [1]}]
    settings = _settings(
        sqlite_store,
        _sql(
            f"sqlite:///{source_db}",
            {"ec_students": "SELECT uid AS student_id, nick AS username FROM users"},
        ),
        api.source({"ec_books": "books"}),
    )
    summary = run_ec_import(settings, FrozenClock(NOW_MS))
    assert summary.startswith("2 of 2 tables imported: ec_students 2 rows")
    assert _query(settings, "SELECT student_id, username FROM ec_students") == [
        ("u1", "ann"),
        ("u2", "bob"),
    ]
    assert _query(settings, "SELECT book_id, page_count FROM ec_books") == [("b1", 10)]
    assert _state(settings, "ec_books")["source"] == "library"


# --- HTTP sources -------------------------------------------------------------------------


@dataclass
class Api:
    """An HTTP server of the test's own serving tables as JSON, page by page."""

    port: int
    tables: dict[str, list[Any]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # 503s to answer first, per table
    requests: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def source(self, tables: dict[str, str], **extra: Any) -> dict[str, Any]:
        return {
            "kind": "http",
            "name": "library",
            "base_url": f"http://127.0.0.1:{self.port}/api/",
            "auth_value": f"Bearer {TOKEN}",
            "tables": tables,
            "backoff_secs": 0.01,
            **extra,
        }


class _Handler(BaseHTTPRequestHandler):
    """Pages in three styles: ?cursor= with a next link, ?offset=&limit=, ?page=&limit=."""

    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - the base's name
        api = self.server.api
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        name = url.path.removeprefix("/api/")
        with api.lock:
            api.requests.append(f"{name}?{url.query}")
            failing = api.failures.get(name, 0)
            if failing:
                api.failures[name] = failing - 1
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(401, b'{"error": "unauthorized"}')
        if failing:
            return self._send(503, b"busy", {"Retry-After": "0"})
        if name == "slow":
            time.sleep(1.0)
            return self._send(200, b"[]")
        if name == "huge":  # no Content-Length: the client must stop reading by itself
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(64):
                    self.wfile.write(b"[" + b" " * 16_384 + b"]")
            except OSError:
                pass  # the client hung up, as it should
            return None
        if name == "text":
            return self._send(200, b"<html>not json</html>")
        if name not in api.tables:
            return self._send(404, b"{}")
        rows = api.tables[name]
        if "offset" in query:
            start, size = int(query["offset"]), int(query["limit"])
            return self._send(200, json.dumps(rows[start : start + size]).encode())
        if "page" in query:
            size = int(query["limit"])
            start = (int(query["page"]) - 1) * size
            return self._send(200, json.dumps({"data": rows[start : start + size]}).encode())
        start = int(query.get("cursor", "0"))
        following = f"/api/{name}?cursor={start + 2}" if start + 2 < len(rows) else None
        body = {"items": rows[start : start + 2], "next": following}
        return self._send(200, json.dumps(body).encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    api: Api


@pytest.fixture
def api() -> Iterator[Api]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.api = Api(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, name="test-api", daemon=True)
    thread.start()
    yield server.api
    server.shutdown()
    server.server_close()
    thread.join(5)


BOOKS = [
    {"book_id": f"b{i}", "title": f"Book {i}", "page_count": str(100 + i), "language": "en"}
    for i in range(1, 6)
]


def test_http_pages_follow_next_links_and_retry_until_the_server_answers(
    api: Api, store: dict[str, Any]
) -> None:
    api.tables["books"] = BOOKS
    api.tables["steps"] = [{"lp_id": "lp1", "step_id": "s1", "position": 1}]
    api.failures["books"] = 2  # two 503s before the first page
    settings = _settings(store, api.source({"ec_books": "books", "ec_lp_steps": "steps"}))
    summary = run_ec_import(settings, FrozenClock(NOW_MS))
    assert "ec_books 5 rows (5 new, 0 changed, 0 deleted)" in summary
    assert api.requests[:5] == ["books?", "books?", "books?", "books?cursor=2", "books?cursor=4"]
    assert _query(settings, "SELECT book_id, page_count FROM ec_books ORDER BY 1") == [
        (f"b{i}", 100 + i) for i in range(1, 6)
    ]
    # A row gone from the endpoint is gone from the table.
    api.tables["books"] = BOOKS[1:]
    summary = run_ec_import(settings, FrozenClock(NOW_MS + DAY_MS))
    assert "ec_books 4 rows (0 new, 0 changed, 1 deleted)" in summary


@pytest.mark.parametrize("paging", ["offset", "page"])
def test_http_offset_and_page_paging_stop_at_a_short_page(
    api: Api, sqlite_store: dict[str, Any], paging: str
) -> None:
    api.tables["books"] = BOOKS
    settings = _settings(
        sqlite_store, api.source({"ec_books": "books"}, paging=paging, page_size=2)
    )
    summary = run_ec_import(settings, FrozenClock(NOW_MS))
    assert "ec_books 5 rows (5 new" in summary
    if paging == "offset":
        expected = ["offset=0&limit=2", "offset=2&limit=2", "offset=4&limit=2"]
    else:
        expected = ["page=1&limit=2", "page=2&limit=2", "page=3&limit=2"]
    assert api.requests == [f"books?{q}" for q in expected]


def test_http_failures_fail_the_table_and_keep_its_data(
    api: Api, sqlite_store: dict[str, Any]
) -> None:
    api.tables["books"] = BOOKS
    clock = FrozenClock(NOW_MS)
    run_ec_import(_settings(sqlite_store, api.source({"ec_books": "books"})), clock)
    cases = {
        "slow": "GET /api/slow failed 2 times, last: ReadTimeout",
        "huge": "answered a page larger than max_page_bytes (65536)",
        "text": "GET /api/text did not answer JSON",
        "missing": "GET /api/missing answered HTTP 404",
    }
    for path, error in cases.items():
        source = api.source({"ec_books": path}, timeout_secs=0.3, retries=1, max_page_bytes=65_536)
        clock.advance(DAY_MS)
        with pytest.raises(EcImportError, match="ec_books failed, previous data kept") as raised:
            run_ec_import(_settings(sqlite_store, source), clock)
        assert error in str(raised.value), path
        assert _state(_settings(sqlite_store), "ec_books")["last_status"] == "failed"
        assert _query(_settings(sqlite_store), "SELECT count(*) FROM ec_books") == [(5,)]
    wrong = api.source({"ec_books": "books"}, auth_value="Bearer wrong")
    with pytest.raises(EcImportError, match=r"answered HTTP 401 \(check auth_value\)") as raised:
        run_ec_import(_settings(sqlite_store, wrong), clock)
    assert "wrong" not in str(raised.value) and TOKEN not in str(raised.value)


def test_a_refused_http_source_is_not_retried_table_after_table(
    sqlite_store: dict[str, Any],
) -> None:
    source = {
        "kind": "http",
        "name": "library",
        "base_url": f"http://127.0.0.1:{free_port()}/",
        "tables": {"ec_books": "books", "ec_resources": "resources"},
        "retries": 2,
        "backoff_secs": 0.01,
    }
    with pytest.raises(EcImportError) as raised:
        run_ec_import(_settings(sqlite_store, source), FrozenClock(NOW_MS))
    summary = str(raised.value)
    assert "ec_books failed, previous data kept: source library for ec_books: GET /books" in summary
    assert "failed 3 times, last: ConnectError" in summary
    assert "ec_resources failed, previous data kept: not tried after ec_books" in summary


# --- the job and /health ------------------------------------------------------------------


def test_without_sources_the_job_does_nothing_and_says_so(sqlite_store: dict[str, Any]) -> None:
    settings = _settings(sqlite_store)
    summary = EDGE_JOBS["ec-import"].run(settings, FrozenClock(NOW_MS))
    assert summary == "no source configured (ecimport.sources): nothing imported"
    assert EDGE_JOBS["ec-import"].interval_secs(settings) == 86_400
    _, body = _health(settings, FrozenClock(NOW_MS))
    assert "ec_import" not in body["checks"]


def test_health_warns_when_the_last_success_is_older_than_two_intervals(
    api: Api, sqlite_store: dict[str, Any]
) -> None:
    api.tables["books"] = BOOKS
    settings = _settings(sqlite_store, api.source({"ec_books": "books"}), interval_secs=3600)
    clock = FrozenClock(NOW_MS)
    _, body = _health(settings, clock)
    assert body["checks"]["ec_import"]["output"] == "never imported yet: ec_books"
    run_ec_import(settings, clock)
    clock.advance(3_600_000)
    _, body = _health(settings, clock)
    assert body["checks"]["ec_import"] == {
        "status": "pass",
        "failed_tables": [],
        "bad_rows": 0,
        "last_success_age_s": 3600.0,
    }
    assert body["ec_import_ok"] == 1
    clock.advance(2 * 3_600_000)
    status, body = _health(settings, clock)
    assert status == 200 and body["checks"]["ec_import"]["status"] == "warn"
    assert "over twice ecimport.interval_secs (3600)" in body["checks"]["ec_import"]["output"]
