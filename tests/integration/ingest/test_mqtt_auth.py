"""MQTT with a password file and an ACL on a real Mosquitto: each school on its own topic.

The broker here is the one docs/security.md describes: Hopper's account may read every
school's topic, each school's account may write only its own (``pattern write
hopper/%u/events``), and Hopper checks that the events' school is the topic's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from support.servers import Mosquitto, mosquitto

from hopper.client import MqttSender, make_event
from hopper.config import HopperSettings, load_settings
from hopper.edge import create_app
from hopper.events import encode_batch
from hopper.store import open_event_store
from hopper.testing import NOW_MS, FrozenClock

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ACL = """\
user hopper-edge
topic read hopper/+/events

pattern write hopper/%u/events
"""
USERS = {"hopper-edge": "edge-secret", "school-a": "a-secret", "school-b": "b-secret"}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with mosquitto(tmp_path, users=USERS, acl=ACL) as running:
        yield running


def _settings(tmp_path: Path, broker: Mosquitto, password: str = "edge-secret") -> HopperSettings:
    return load_settings(
        store={"sqlite_path": tmp_path / "events.db"},
        pipeline={"edge": {"sources": ["http", "mqtt"]}},
        mqtt={
            "port": broker.port,
            "username": "hopper-edge",
            "password": password,
            "require_topic_school": True,
            "client_id": "hopper-edge-test",
            "reconnect_min_secs": 1,
            "reconnect_max_secs": 1,
        },
    )


def _wait(condition: Callable[[], bool], what: str, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _batch(school: str, *numbers: int) -> bytes:
    return encode_batch(
        make_event(
            "page_viewed",
            {"book_id": "b", "page": n},
            username="s",
            device_id=f"tab-{school}",
            school_id=school,
            app_time_ms=NOW_MS + n,
        )
        for n in numbers
    )


def _count(settings: HopperSettings, table: str) -> int:
    store = open_event_store(settings.store)
    try:
        return store.count(table)
    finally:
        store.close()


def _mqtt_ok(client: TestClient) -> bool:
    return client.get("/health").json()["checks"]["mqtt"]["status"] == "pass"


def test_each_school_writes_only_its_own_events(tmp_path: Path, broker: Mosquitto) -> None:
    settings = _settings(tmp_path, broker)
    app = create_app(settings, clock=FrozenClock(NOW_MS), run_jobs=False)
    with TestClient(app) as client:
        _wait(lambda: _mqtt_ok(client), "Hopper's authenticated subscription")
        school_a = MqttSender(
            port=broker.port,
            topic="hopper/school-a/events",
            client_id="tablet-a",
            username="school-a",
            password="a-secret",
        )
        try:
            school_a.publish_all([_batch("school-a", 1, 2)])
            _wait(lambda: _count(settings, "reader_events") == 2, "school-a's events")
            # On its own topic, but claiming another school: refused by Hopper, recorded.
            school_a.publish_all([_batch("school-b", 3)])
            _wait(lambda: _count(settings, "reader_events_errors") == 1, "the rejection")
            # Another school's topic: the broker's ACL drops it before Hopper sees it.
            school_a.topic = "hopper/school-b/events"
            school_a.publish_all([_batch("school-b", 4)])
            school_a.topic = "hopper/school-a/events"
            school_a.publish_all([_batch("school-a", 5)])  # a marker after the dropped one
            _wait(lambda: _count(settings, "reader_events") == 3, "the marker event")
        finally:
            school_a.close()
    store = open_event_store(settings.store)
    try:
        (error,) = store.errors()
    finally:
        store.close()
    assert error.reason == "school_not_allowed" and error.source == "mqtt"
    assert _count(settings, "reader_events") == 3  # 1, 2 and 5; never 4
    assert "Denied PUBLISH from tablet-a" in broker.log.read_text()


def test_a_wrong_broker_password_is_reported_by_health(tmp_path: Path, broker: Mosquitto) -> None:
    settings = _settings(tmp_path, broker, password="wrong")
    app = create_app(settings, clock=FrozenClock(NOW_MS), run_jobs=False)
    with TestClient(app) as client:
        time.sleep(1.5)
        check = client.get("/health").json()["checks"]["mqtt"]
    assert check["status"] == "warn"
    assert "wrong" not in str(check)


def test_hopper_reaches_the_broker_over_tls(tmp_path: Path) -> None:
    with mosquitto(tmp_path, users=USERS, acl=ACL, tls=True) as broker:
        settings = _settings(tmp_path, broker)
        settings.mqtt.tls_ca_file = tmp_path / "ca.crt"
        app = create_app(settings, clock=FrozenClock(NOW_MS), run_jobs=False)
        with TestClient(app) as client:
            _wait(lambda: _mqtt_ok(client), "Hopper's subscription over TLS")
            school_a = MqttSender(
                port=broker.port,
                topic="hopper/school-a/events",
                client_id="tablet-a-tls",
                username="school-a",
                password="a-secret",
                tls_ca_file=str(tmp_path / "ca.crt"),
            )
            try:
                school_a.publish_all([_batch("school-a", 1)])
                _wait(lambda: _count(settings, "reader_events") == 1, "the event over TLS")
            finally:
                school_a.close()


# paho drops the socket of a failed TLS handshake without closing it (its reconnect loop
# opens the next one): the ResourceWarning is paho's, not Hopper's.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_hopper_refuses_a_broker_it_cannot_verify(tmp_path: Path) -> None:
    with mosquitto(tmp_path, users=USERS, acl=ACL, tls=True) as broker:
        settings = _settings(tmp_path, broker)
        settings.mqtt.tls = True  # the system's CAs: they did not sign this broker
        app = create_app(settings, clock=FrozenClock(NOW_MS), run_jobs=False)
        with TestClient(app) as client:
            time.sleep(1.5)
            assert client.get("/health").json()["checks"]["mqtt"]["status"] == "warn"
