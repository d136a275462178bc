"""The MQTT source end to end through a real Mosquitto: QoS 1, PUBACK after the commit.

Each test has its own topic prefix and client id, and forgets its persistent session on
the broker afterwards, so runs do not see each other's messages.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import MQTT_HOST, MQTT_PORT, require_service
from paho.mqtt.enums import CallbackAPIVersion
from starlette.testclient import TestClient

from hopper.client import MqttSender
from hopper.config import HopperSettings, load_settings
from hopper.edge import create_app
from hopper.edge.node import EdgeNode
from hopper.store import open_event_store
from hopper.store.base import StoredError
from hopper.testing import NOW_MS, FrozenClock, bearer, create_token, make_batch

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

DEADLINE_S = 15.0


def _wait_until(condition: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class MqttEdge:
    """One test's topic, client id, store and publisher, and edge nodes started on them."""

    def __init__(self, tmp_path: Path) -> None:
        uid = uuid.uuid4().hex[:12]
        self.client_id = f"hopper-test-{uid}"
        self.topic = f"hopper-test-{uid}/school-1/events"
        self._filter = f"hopper-test-{uid}/+/events"
        self._db = tmp_path / "events.db"
        self._sender: MqttSender | None = None

    def settings(self, **overrides: Any) -> HopperSettings:
        """Settings of an edge node with MQTT among its sources, on this test's ids."""
        mqtt_settings = {
            "host": MQTT_HOST,
            "port": MQTT_PORT,
            "topic": self._filter,
            "client_id": self.client_id,
            "reconnect_min_secs": 1,
            "reconnect_max_secs": 2,
            **overrides.pop("mqtt", {}),
        }
        return load_settings(
            store={"sqlite_path": self._db},
            pipeline={"edge": {"sources": ["http", "websocket", "mqtt"]}},
            mqtt=mqtt_settings,
            **overrides,
        )

    @contextlib.contextmanager
    def node(self, settings: HopperSettings | None = None) -> Iterator[TestClient]:
        """Run an edge app (its lifespan starts the MQTT thread) until subscribed."""
        app = create_app(settings or self.settings(), clock=FrozenClock(NOW_MS), run_jobs=False)
        token = create_token((settings or self.settings()).store, "ingest", "stream")
        with TestClient(app, headers=bearer(token)) as client:
            _wait_until(lambda: mqtt_status(client) == "pass", "the MQTT subscription")
            yield client

    def publish(self, *batches: bytes) -> None:
        """Publish with QoS 1 and wait for the broker's PUBACKs."""
        if self._sender is None:
            self._sender = MqttSender(MQTT_HOST, MQTT_PORT, topic=self.topic)
        self._sender.publish_all(batches, timeout=DEADLINE_S)

    def count(self, table: str) -> int:
        """Count rows of a store table, with a connection of the test's own."""
        store = open_event_store(self.settings().store)
        try:
            return store.count(table)
        finally:
            store.close()

    def errors(self) -> list[StoredError]:
        """Return the recorded rejections."""
        store = open_event_store(self.settings().store)
        try:
            return store.errors()
        finally:
            store.close()

    def wait_count(self, table: str, expected: int) -> None:
        """Wait until ``table`` holds ``expected`` rows, and check it holds no more."""
        _wait_until(lambda: self.count(table) >= expected, f"{expected} rows in {table}")
        assert self.count(table) == expected

    def close(self) -> None:
        """Disconnect the publisher and drop the persistent session from the broker."""
        if self._sender is not None:
            self._sender.close()
        _forget_session(self.client_id)


def _forget_session(client_id: str) -> None:
    """Connect once with clean_session=True: Mosquitto then discards the session."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=True,
        protocol=mqtt.MQTTv311,
    )
    client.connect(MQTT_HOST, MQTT_PORT)
    client.loop_start()
    try:
        _wait_until(client.is_connected, "a clean-session connection", deadline_s=5.0)
    finally:
        client.disconnect()
        client.loop_stop()


def mqtt_status(client: TestClient) -> str:
    """Return the MQTT check's status from ``GET /health``."""
    return str(client.get("/health").json()["checks"]["mqtt"]["status"])


def _node(client: TestClient) -> EdgeNode:
    node: EdgeNode = client.app.state.node  # type: ignore[attr-defined]
    return node


def _mqtt_events_received(client: TestClient) -> float:
    value = _node(client).metrics.registry.get_sample_value(
        "events_received_total", {"component": "mqtt"}
    )
    return value or 0.0


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[MqttEdge]:
    require_service("mosquitto")
    mqtt_edge = MqttEdge(tmp_path)
    yield mqtt_edge
    mqtt_edge.close()


def test_published_batches_are_stored(edge: MqttEdge) -> None:
    with edge.node() as client:
        assert client.get("/health").json()["mqtt_ok"] == 1
        edge.publish(*(make_batch(10, start=10 * n) for n in range(5)))
        edge.wait_count("reader_events", 50)
        assert edge.count("raw_events") == 50
        assert edge.count("reader_events_errors") == 0


def test_garbage_is_recorded_once_and_acknowledged(edge: MqttEdge) -> None:
    with edge.node():
        edge.publish(b"\xff\xfe not a batch")
        edge.wait_count("reader_events_errors", 1)
        edge.publish(make_batch(3))  # the bad message blocks nothing behind it
        edge.wait_count("reader_events", 3)
    [error] = edge.errors()
    assert (error.source, error.reason) == ("mqtt", "undecodable")
    assert error.raw == b"\xff\xfe not a batch"
    # Same client id, same session: an unacknowledged message would come again first,
    # before the marker batch, and be recorded a second time.
    with edge.node():
        edge.publish(make_batch(1, start=100))
        edge.wait_count("reader_events", 4)
    assert edge.count("reader_events_errors") == 1


def test_same_batch_published_twice_is_stored_once(edge: MqttEdge) -> None:
    batch = make_batch(8)
    with edge.node() as client:
        edge.publish(batch, batch)
        _wait_until(lambda: _mqtt_events_received(client) == 16, "both deliveries")
        edge.wait_count("reader_events", 8)
        assert edge.count("raw_events") == 8


def test_batches_sent_while_the_node_is_down_arrive_exactly_once(edge: MqttEdge) -> None:
    with edge.node():
        edge.publish(make_batch(5))  # the session and its subscription now exist
        edge.wait_count("reader_events", 5)
    # The node is stopped: the broker queues these for its persistent session (QoS 1).
    down = 10
    edge.publish(*(make_batch(20, start=1000 + 20 * n) for n in range(down)))
    with edge.node() as client:
        edge.wait_count("reader_events", 5 + 20 * down)
        # Exactly the queued batches came, none twice: the first node acknowledged its
        # batch before it disconnected.
        assert _mqtt_events_received(client) == 20 * down
    assert edge.count("reader_events_errors") == 0


def test_stopping_mid_stream_neither_loses_nor_repeats(edge: MqttEdge) -> None:
    with edge.node() as first:
        edge.publish(*(make_batch(10, start=10 * n) for n in range(15)))
        # Stopped at once, with messages still on their way or in the intake.
    done_by_first = _mqtt_events_received(first)
    with edge.node() as second:
        # Delivered after everything the broker kept for the session: once it is stored,
        # every redelivery has been processed too.
        edge.publish(make_batch(1, start=1000))
        edge.wait_count("reader_events", 151)
        # What the first node committed, it acknowledged before disconnecting: the
        # second got only the rest, and none of it twice.
        assert done_by_first + _mqtt_events_received(second) == 151


def test_node_reconnects_after_losing_the_broker(edge: MqttEdge) -> None:
    # A 2 s first backoff leaves the health check ample time to see the connection down.
    settings = edge.settings(mqtt={"reconnect_min_secs": 2, "reconnect_max_secs": 4})
    with edge.node(settings) as client:
        # A second client with the same id makes the broker drop the node's connection.
        lost = threading.Event()
        intruder = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=edge.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        intruder.on_disconnect = lambda *args: lost.set()
        intruder.connect(MQTT_HOST, MQTT_PORT)
        intruder.loop_start()
        try:
            _wait_until(lambda: mqtt_status(client) == "warn", "the node to notice")
            assert client.get("/health").json()["mqtt_ok"] == 0
            # The node reconnects with backoff, taking its session back from the intruder.
            assert lost.wait(DEADLINE_S), "the node did not reconnect"
        finally:
            intruder.loop_stop()
        _wait_until(lambda: mqtt_status(client) == "pass", "the node to subscribe again")
        edge.publish(make_batch(4))
        edge.wait_count("reader_events", 4)


def test_full_intake_queue_slows_mqtt_down_without_loss(edge: MqttEdge) -> None:
    settings = edge.settings(ingest={"queue_max_batches": 2})
    with edge.node(settings) as client:
        assert client.get("/health").json()["queue_capacity"] == 2
        edge.publish(*(make_batch(5, start=5 * n) for n in range(200)))
        edge.wait_count("reader_events", 1000)
    assert edge.count("reader_events_errors") == 0
