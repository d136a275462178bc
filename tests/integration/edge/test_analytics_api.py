"""The analytics API on SQLite and the real PostgreSQL: every endpoint, scope and reach.

A small school (two classes, three students, a teacher of one class) reads books, reviews
cards, opens a resource and completes a path step; ``hopper job process`` derives the
tables; then each endpoint is asked with tokens of each audience, and tokens that must
not see a student or class are refused on every endpoint.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from hopper.client import make_event
from hopper.config import HopperSettings, load_settings
from hopper.edge import create_app
from hopper.edge.api.reports import ReportCache
from hopper.edge.ecimport import run_ec_import
from hopper.edge.jobs import EDGE_JOBS
from hopper.events import encode_batch
from hopper.store.engine import engine_for
from hopper.store.reference import (
    ec_books,
    ec_class_members,
    ec_class_teachers,
    ec_classes,
    ec_learning_paths,
    ec_schools,
    ec_students,
    ec_teachers,
)
from hopper.testing import FrozenClock, bearer, create_token

pytestmark = pytest.mark.integration

NOW = 1_790_000_000_000 + 12 * 3_600_000  # 2026-09-22 ~ noon UTC
MIN = 60_000
PROTOBUF = {"content-type": "application/x-protobuf"}


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> HopperSettings:
    if request.param == "sqlite":
        return load_settings(store={"sqlite_path": tmp_path / "e.db"})
    url = request.getfixturevalue("postgres_url")
    return load_settings(store={"backend": "postgres", "postgres_url": url})


def _row(**values: Any) -> dict[str, Any]:
    digest = hashlib.blake2b(repr(sorted(values.items())).encode(), digest_size=16).digest()
    return {**values, "row_hash": digest, "changed_ms": NOW}


def _reference(settings: HopperSettings) -> None:
    engine = engine_for(settings.store)
    try:
        with engine.begin() as conn:
            conn.execute(ec_schools.insert(), [_row(school_id="s1", name="One", time_zone="UTC")])
            conn.execute(
                ec_students.insert(),
                [
                    _row(
                        student_id=f"st{n}",
                        username=f"kid{n}",
                        display_name=f"Kid {n}",
                        school_id="s1",
                        grade="5",
                    )
                    for n in (1, 2, 3)
                ],  # fmt: skip
            )
            conn.execute(
                ec_classes.insert(),
                [_row(class_id=c, school_id="s1", name=c, grade="5") for c in ("5a", "5b")],
            )
            conn.execute(
                ec_class_members.insert(),
                [
                    _row(class_id="5a", student_id="st1"),
                    _row(class_id="5a", student_id="st2"),
                    _row(class_id="5b", student_id="st3"),
                ],
            )
            conn.execute(
                ec_teachers.insert(),
                [_row(teacher_id="t1", username="teach", display_name="T", school_id="s1")],
            )
            conn.execute(ec_class_teachers.insert(), [_row(class_id="5a", teacher_id="t1")])
            conn.execute(
                ec_books.insert(), [_row(book_id="b1", title="Book", page_count=4, language="en")]
            )
            conn.execute(ec_learning_paths.insert(), [_row(lp_id="lp1", title="Path")])
    finally:
        engine.dispose()


def _events(username: str, device: str, start: int = NOW - 60 * MIN) -> bytes:
    def ev(kind: str, at: int, **fields: Any) -> Any:
        return make_event(
            kind, fields, username=username, device_id=device, school_id="s1", app_time_ms=at
        )

    t = start
    return encode_batch(
        [
            ev("app_session_started", t),
            ev("book_opened", t + 1000, book_id="b1"),
            *(
                ev("page_viewed", t + 2000 + p * 30_000, book_id="b1", page=p, duration_ms=30_000)
                for p in range(1, 5)
            ),
            ev(
                "flashcard_reviewed",
                t + 200_000,
                deck_id="d1",
                card_id="c1",
                grade=3,
                response_ms=900,
            ),
            ev("resource_opened", t + 210_000, resource_id="r1", book_id="b1"),
            ev("lp_step_completed", t + 220_000, lp_id="lp1", step_id="s1", score=0.9),
            ev("app_session_ended", t + 230_000),
        ]
    )


@pytest.fixture
def api(settings: HopperSettings) -> Iterator[tuple[TestClient, dict[str, str]]]:
    clock = FrozenClock(NOW)
    app = create_app(settings, clock=clock, run_jobs=False)
    with TestClient(app) as client:
        _reference(settings)
        ingest = create_token(settings.store, "ingest")
        for n in (1, 2, 3):
            response = client.post(
                "/v1/events",
                content=_events(f"kid{n}", f"tab{n}"),
                headers={**PROTOBUF, **bearer(ingest)},
            )
            assert response.json()["accepted"] == 10, response.json()
        EDGE_JOBS["process"].run(settings, clock)
        tokens = {
            "apps": create_token(settings.store, "apps"),
            "kid1": create_token_for(settings, "apps", subject="student:kid1"),
            "teacher": create_token_for(settings, "teachers", subject="teacher:t1"),
            "portal": create_token(settings.store, "portal"),
            "devops": create_token(settings.store, "devops"),
            "ec": create_token(settings.store, "ec"),
            "metrics": create_token(settings.store, "metrics"),
            "ingest": ingest,
        }
        yield client, tokens


def create_token_for(settings: HopperSettings, *scopes: str, subject: str) -> str:
    from hopper.access import Scope
    from hopper.access import create_token as create

    return create(settings.store, "t", [Scope(s) for s in scopes], None, NOW, subject=subject).token


def _get(client: TestClient, token: str, path: str, **headers: str) -> Any:
    return client.get(path, headers={**bearer(token), **headers})


def test_a_students_summary_books_page_times_and_timeline(
    api: tuple[TestClient, dict[str, str]],
) -> None:
    client, tokens = api
    summary = _get(client, tokens["apps"], "/v1/students/kid1").json()
    assert summary["display_name"] == "Kid 1"
    assert summary["active_days"] == 1 and summary["current_streak"] == 1
    assert summary["pages_read"] == 4 and summary["flashcard_reviews"] == 1
    (book,) = _get(client, tokens["apps"], "/v1/students/kid1/books").json()["items"]
    assert (book["title"], book["page_count"], book["pages_read"]) == ("Book", 4, 4)
    assert book["completion"] == 1.0 and book["is_completed"] is True
    pages = _get(client, tokens["apps"], "/v1/students/kid1/books/b1/page-times").json()
    assert [p["page"] for p in pages["items"]] == [1, 2, 3, 4]
    assert all(p["reading_seconds"] == 30.0 for p in pages["items"][:3])
    first = _get(client, tokens["apps"], "/v1/students/kid1/timeline?limit=4").json()
    assert [e["type"] for e in first["items"]][:2] == ["app_session_ended", "lp_step_completed"]
    rest = _get(client, tokens["apps"], f"/v1/students/kid1/timeline?after={first['next']}").json()
    times = [e["time_ms"] for e in first["items"] + rest["items"]]
    assert len(times) == 10 and times == sorted(times, reverse=True) and rest["next"] is None


def test_reports_carry_an_etag(api: tuple[TestClient, dict[str, str]]) -> None:
    client, tokens = api
    response = _get(client, tokens["apps"], "/v1/students/kid1")
    tag = response.headers["etag"]
    assert (
        _get(client, tokens["apps"], "/v1/students/kid1", **{"if-none-match": tag}).status_code
        == 304
    )


def test_a_student_token_sees_only_that_student(api: tuple[TestClient, dict[str, str]]) -> None:
    client, tokens = api
    assert _get(client, tokens["kid1"], "/v1/students/kid1").status_code == 200
    for path in ("", "/books", "/books/b1/page-times", "/timeline"):
        assert _get(client, tokens["kid1"], f"/v1/students/kid2{path}").status_code == 403
    assert _get(client, tokens["kid1"], "/v1/portal/classes/5a").status_code == 403


def test_a_teacher_sees_only_their_classes(api: tuple[TestClient, dict[str, str]]) -> None:
    client, tokens = api
    assert _get(client, tokens["teacher"], "/v1/students/kid2").status_code == 200
    assert _get(client, tokens["teacher"], "/v1/students/kid3").status_code == 403  # class 5b
    klass = _get(client, tokens["teacher"], "/v1/portal/classes/5a").json()
    assert klass["students"] == 2 and klass["active_students"]["today"] == 2
    assert _get(client, tokens["teacher"], "/v1/portal/classes/5b").status_code == 403
    assert _get(client, tokens["teacher"], "/v1/portal/schools/s1").status_code == 403


def test_the_portal_reports_a_school(api: tuple[TestClient, dict[str, str]]) -> None:
    client, tokens = api
    school = _get(client, tokens["portal"], "/v1/portal/schools/s1?days=7").json()
    assert school["students"] == 3
    assert school["active_students"] == {"today": 3, "last_7_days": 3, "last_30_days": 3}
    assert len(school["reading_minutes_by_day"]) == 7
    assert school["reading_minutes_by_day"][-1]["minutes"] > 0
    (book,) = school["top_books"]
    assert (book["book_id"], book["readers"], book["completed"]) == ("b1", 3, 3)
    (path,) = school["learning_paths"]
    assert (path["lp_id"], path["students"]) == ("lp1", 3)


def _kept_reports(client: TestClient) -> ReportCache:
    """The API's kept reports (the app mounted at ``/v1``)."""
    (api,) = (r.app for r in client.app.routes if getattr(r, "path", None) == "/v1")  # type: ignore[attr-defined]
    cache: ReportCache = api.state.api.reports
    return cache


def _rename_school(settings: HopperSettings, tmp_path: Path, name: str) -> None:
    """Import ``ec_schools`` from an SQLite source that names school s1 ``name``."""
    source = tmp_path / "econtent.db"
    with sqlite3.connect(source) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS school (id TEXT, name TEXT)")
        conn.execute("DELETE FROM school")
        conn.execute("INSERT INTO school VALUES ('s1', ?)", (name,))
    query = "SELECT id AS school_id, name, 'UTC' AS time_zone FROM school"
    with_import = settings.model_copy(
        update={
            "ecimport": load_settings(
                ecimport={
                    "sources": [
                        {
                            "kind": "sql",
                            "name": "econtent",
                            "url": f"sqlite:///{source}",
                            "tables": {"ec_schools": query},
                        }
                    ]
                }
            ).ecimport
        }
    )
    assert run_ec_import(with_import, FrozenClock(NOW)).startswith("1 of 1 tables imported")


def test_a_report_is_kept_until_processing_or_the_import_changes_its_data(
    api: tuple[TestClient, dict[str, str]], settings: HopperSettings, tmp_path: Path
) -> None:
    client, tokens = api
    kept = _kept_reports(client)
    first = _get(client, tokens["portal"], "/v1/portal/schools/s1")
    again = _get(client, tokens["portal"], "/v1/portal/schools/s1")
    assert again.content == first.content and again.headers["etag"] == first.headers["etag"]
    assert (kept.hits, kept.misses) == (1, 1)
    # Another count of days is another report.
    assert (
        len(
            _get(client, tokens["portal"], "/v1/portal/schools/s1?days=3").json()[
                "reading_minutes_by_day"
            ]
        )
        == 3
    )
    # The import renames the school, twice within the same millisecond of its clock.
    for name in ("Renamed", "Renamed again"):
        _rename_school(settings, tmp_path, name)
        assert _get(client, tokens["portal"], "/v1/portal/schools/s1").json()["name"] == name
    # A processing run over new events: the minutes read move.
    before = first.json()["reading_minutes_by_day"][-1]["minutes"]
    ingest = client.post(
        "/v1/events",
        content=_events("kid1", "tab1b", start=NOW - 30 * MIN),
        headers={**PROTOBUF, **bearer(tokens["ingest"])},
    )
    assert ingest.json()["accepted"] == 10, ingest.json()
    EDGE_JOBS["process"].run(settings, FrozenClock(NOW))
    after = _get(client, tokens["portal"], "/v1/portal/schools/s1").json()
    assert after["reading_minutes_by_day"][-1]["minutes"] > before
    # The class report is kept the same way, and each token's reach is checked before.
    assert _get(client, tokens["teacher"], "/v1/portal/classes/5a").status_code == 200
    assert _get(client, tokens["teacher"], "/v1/portal/classes/5a").status_code == 200
    assert _get(client, tokens["teacher"], "/v1/portal/classes/5b").status_code == 403
    assert kept.hits == 2


def test_devops_sees_devices_events_ingest_and_jobs(api: tuple[TestClient, dict[str, str]]) -> None:
    client, tokens = api
    devices = _get(client, tokens["devops"], "/v1/devops/devices?limit=2").json()
    assert [d["device_id"] for d in devices["items"]] == ["tab1", "tab2"]
    more = _get(client, tokens["devops"], f"/v1/devops/devices?after={devices['next']}").json()
    assert [d["device_id"] for d in more["items"]] == ["tab3"]
    days = _get(client, tokens["devops"], "/v1/devops/events?days=3").json()["days"]
    assert days[-1]["events"] == 30
    ingest = _get(client, tokens["devops"], "/v1/devops/ingest").json()
    assert ingest["events_not_yet_processed"] == 0 and ingest["error_rows"] == 0
    assert _get(client, tokens["devops"], "/v1/devops/jobs").status_code == 200


def test_ec_asks_in_bulk_whether_resources_were_opened(
    api: tuple[TestClient, dict[str, str]],
) -> None:
    client, tokens = api
    answer = client.post(
        "/v1/ec/opened",
        json={"items": [{"username": "kid1", "resource_ids": ["r1", "r9"]}]},
        headers=bearer(tokens["ec"]),
    ).json()["items"]
    assert [(a["resource_id"], a["opened"], a["times"]) for a in answer] == [
        ("r1", True, 1),
        ("r9", False, 0),
    ]
    assert answer[0]["first_ms"] == NOW - 60 * MIN + 210_000


@pytest.mark.parametrize(
    ("token", "path"),
    [
        (None, "/v1/students/kid1"),
        ("ingest", "/v1/students/kid1"),
        ("apps", "/v1/devops/devices"),
        ("devops", "/v1/portal/schools/s1"),
        ("portal", "/v1/students/kid1"),
    ],
)
def test_every_endpoint_needs_its_scope(
    api: tuple[TestClient, dict[str, str]], token: str | None, path: str
) -> None:
    client, tokens = api
    headers = bearer(tokens[token]) if token else {}
    assert client.get(path, headers=headers).status_code == (401 if token is None else 403)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/students/kid1/books?limit=0",
        "/v1/students/kid1/books?limit=100000",
        "/v1/students/kid1/timeline?after=not-a-cursor",
        "/v1/students/kid1/books?after=WyJ4IiwgMV0",  # a cursor of another list
        "/v1/portal/schools/s1?days=-3",
        "/v1/devops/events?days=abc",
        "/v1/students/nobody",
        "/v1/portal/classes/none",
    ],
)
def test_bad_parameters_get_a_clear_4xx(api: tuple[TestClient, dict[str, str]], path: str) -> None:
    client, tokens = api
    token = (
        tokens["apps"]
        if "/students/" in path
        else tokens["portal"]
        if "portal" in path
        else tokens["devops"]
    )
    response = client.get(path, headers=bearer(token))
    assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
    assert "detail" in response.json()


def test_the_openapi_description_and_its_page(api: tuple[TestClient, dict[str, str]]) -> None:
    client, _ = api
    spec = client.get("/v1/openapi.json").json()
    assert {"/students/{username}", "/portal/schools/{school_id}", "/ec/opened"} <= set(
        spec["paths"]
    )
    page = client.get("/docs")
    assert page.status_code == 200 and "/v1/openapi.json" in page.text
    assert client.get("/static/swagger-ui/swagger-ui-bundle.js").status_code == 200


def test_requests_are_timed_by_route_template_never_by_the_path_sent(
    api: tuple[TestClient, dict[str, str]],
) -> None:
    client, tokens = api
    assert _get(client, tokens["apps"], "/v1/students/kid1").status_code == 200
    assert _get(client, tokens["apps"], "/v1/students/kid2/books").status_code == 200
    assert _get(client, tokens["kid1"], "/v1/students/kid2").status_code in (403, 404)
    for n in range(5):  # invented paths must not each become a label
        assert _get(client, tokens["apps"], f"/v1/no-such-{n}").status_code == 404
    text = client.get("/metrics", headers=bearer(tokens["metrics"])).text
    counts = {
        line.split("{", 1)[1].rsplit("}", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("api_request_seconds_count{")
    }
    assert counts['endpoint="/v1/students/{username}",status="2xx"'] >= 1
    assert counts['endpoint="/v1/students/{username}/books",status="2xx"'] >= 1
    assert counts['endpoint="/v1/students/{username}",status="4xx"'] >= 1
    assert counts['endpoint="unmatched",status="4xx"'] == 5
    assert not any("no-such" in key or "kid" in key for key in counts)
