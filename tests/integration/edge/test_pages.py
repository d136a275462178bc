"""The web pages on SQLite and the real PostgreSQL: every page of every role, and the scope.

The same seeded school as the browser tests (real import, ingest and processing), asked
through the ASGI app: each role's pages answer 200, teacher A gets 403 on class B's pages,
fragments, CSV and stream, a CSV holds the table's rows, and no answer is a 5xx.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from support.ui_school import PASSWORD, school_settings, seed_school

from hopper.config import HopperSettings
from hopper.edge import create_app
from hopper.testing import bearer, create_token

pytestmark = pytest.mark.integration

PAGES = {
    "teacher1": ["/ui/classes", "/ui/classes/5a", "/ui/classes/5a/live", "/ui/classes/5a/seats",
                 "/ui/classes/5a/students", "/ui/classes/5a/books", "/ui/classes/5a/flashcards",
                 "/ui/classes/5a/paths", "/ui/students", "/ui/about"],
    "staff": ["/ui/school", "/ui/classes/5b", "/ui/students", "/ui/devices", "/ui/school.csv"],
    "it": ["/ui/devices", "/ui/server", "/ui/about"],
    "admin": ["/ui/settings", "/ui/server", "/ui/school"],
}  # fmt: skip


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> HopperSettings:
    if request.param == "sqlite":
        return school_settings(tmp_path)
    url = request.getfixturevalue("postgres_url")
    return school_settings(tmp_path, store={"backend": "postgres", "postgres_url": url})


@contextlib.contextmanager
def _seeded_client(settings: HopperSettings) -> Iterator[TestClient]:
    """The node's app, with the school seeded through its own ingest."""
    with TestClient(create_app(settings, run_jobs=False)) as client:
        token = create_token(settings.store, "ingest")

        def post(batch: bytes, token: str) -> None:
            headers = {"content-type": "application/x-protobuf", **bearer(token)}
            assert client.post("/v1/events", content=batch, headers=headers).status_code == 200

        seed_school(settings, post, token, int(time.time() * 1000))
        yield client


@pytest.fixture
def client(settings: HopperSettings) -> Iterator[TestClient]:
    with _seeded_client(settings) as client:
        yield client


def _login(client: TestClient, username: str) -> None:
    client.cookies.clear()
    form = client.get("/ui/login").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
    answer = client.post(
        "/ui/login",
        data={"csrf": csrf, "username": username, "password": PASSWORD, "next": "/ui/"},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text


def test_every_role_sees_its_pages(client: TestClient) -> None:
    for username, paths in PAGES.items():
        _login(client, username)
        for path in paths:
            answer = client.get(path)
            assert answer.status_code == 200, (username, path, answer.text[:500])
        key = re.search(r"/ui/students/([0-9a-f]{12})", client.get("/ui/students").text)
        if key is not None:
            assert client.get(f"/ui/students/{key.group(1)}").status_code == 200


def test_teacher_a_is_refused_class_b_everywhere(client: TestClient) -> None:
    _login(client, "teacher1")
    fragment = {"hx-request": "true"}
    for path in ("/ui/classes/5b", "/ui/classes/5b/students", "/ui/classes/5b/students.csv",
                 "/ui/classes/5b/books", "/ui/classes/5b/flashcards", "/ui/classes/5b/paths",
                 "/ui/classes/5b/live", "/ui/classes/5b/live/tiles", "/ui/classes/5b/live/stream",
                 "/ui/classes/5b/seats", "/ui/school", "/ui/server", "/ui/settings"):  # fmt: skip
        assert client.get(path).status_code == 403, path
        assert client.get(path, headers=fragment).status_code == 403, path
    _login(client, "staff")
    key = re.search(r"/ui/students/([0-9a-f]{12})", client.get("/ui/classes/5b/students").text)
    assert key is not None
    _login(client, "teacher1")
    assert client.get(f"/ui/students/{key.group(1)}").status_code == 403


def test_the_csv_holds_the_rows_of_the_table(client: TestClient) -> None:
    _login(client, "teacher1")
    page = client.get("/ui/classes/5a/students?sort=minutes&dir=desc&period=all").text
    names = re.findall(r'<th scope="row"><a href="/ui/students/[^"]+" dir="auto">([^<]+)</a>', page)
    rows = list(csv.reader(io.StringIO(client.get(
        "/ui/classes/5a/students.csv?sort=minutes&dir=desc&period=all").text)))  # fmt: skip
    assert rows[0][:2] == ["Student", "Reading minutes"]
    assert [r[0] for r in rows[1:]] == names and names
    minutes = [int(r[1]) for r in rows[1:]]
    assert minutes == sorted(minutes, reverse=True)


@pytest.mark.parametrize(
    "path",
    [
        "/ui/classes/5a/students?page=-4&sort=%3Cx%3E&dir=up&period=9999&q=" + "x" * 5000,
        "/ui/students/" + "f" * 300,
        "/ui/classes/" + "z" * 300,
        "/ui/classes/5a/books?book=%00%27%22",
        "/ui/classes/5a/live?sort=drop&view=table;",
        "/ui/classes/5a?feed=../../etc",
    ],
)
def test_hostile_parameters_get_a_page_or_a_4xx_never_a_5xx(client: TestClient, path: str) -> None:
    _login(client, "teacher1")
    assert client.get(path).status_code < 500


def test_a_form_that_is_too_big_or_not_a_form_is_refused(client: TestClient) -> None:
    _login(client, "admin")
    headers: dict[str, Any] = {"content-type": "application/x-www-form-urlencoded"}
    assert (
        client.post("/ui/settings", content=b"a=" + b"x" * 70_000, headers=headers).status_code
        == 413
    )
    assert (
        client.post(
            "/ui/settings", content=b"{}", headers={"content-type": "application/json"}
        ).status_code
        == 415
    )


def test_the_devices_page_reads_batteries_from_the_store_when_the_monitor_is_off(
    tmp_path: Path,
) -> None:
    settings = school_settings(
        tmp_path, pipeline={"edge": {"sinks": ["store", "protos", "lp-events"]}}
    )
    with _seeded_client(settings) as client:
        _login(client, "it")
        page = client.get("/ui/devices")
    assert page.status_code == 200
    shown = dict(
        re.findall(r'<tr><th scope="row">([^<]+)</th>.*?<td class="num">([^<]+)</td>', page.text)
    )
    # Each tablet's newest stored CAM status, by id: what the page must show.
    conn = sqlite3.connect(settings.store.sqlite_path)
    try:
        newest = conn.execute(
            "SELECT device_id, json_extract(payload, '$.battery_pct') FROM reader_events e "
            "WHERE id = (SELECT max(id) FROM reader_events x WHERE x.device_id = e.device_id "
            "AND x.event_type = 'cam_status')"
        ).fetchall()
    finally:
        conn.close()
    assert newest and shown == {device: f"{battery} %" for device, battery in newest}
