"""MQTT source: QoS 1 subscription through a broker, PUBACK only after the commit.

The session is persistent (clean_session off, fixed client id), so messages that were
delivered but not acknowledged before a crash are delivered again on reconnect; dedup
absorbs the repeats. paho reconnects by itself with exponential backoff.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from hopper.config import MqttSettings
from hopper.errors import BackendMissing
from hopper.ingest.intake import BatchOutcome, Intake

try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
except ImportError as exc:  # pragma: no cover - depends on the install
    raise BackendMissing("mqtt", extra="mqtt", library="paho-mqtt") from exc

logger = logging.getLogger(__name__)


class MqttEventSource:
    """Subscribes to the event topic filter and feeds the intake."""

    source = "mqtt"

    def __init__(self, intake: Intake, settings: MqttSettings) -> None:
        self._intake = intake
        self._settings = settings
        self._stopping = threading.Event()
        self.is_connected = False
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        client.manual_ack_set(True)
        if settings.username:
            password = settings.password.get_secret_value() if settings.password else None
            client.username_pw_set(settings.username, password)
        client.reconnect_delay_set(settings.reconnect_min_secs, settings.reconnect_max_secs)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

    def start(self) -> None:
        """Connect in the background (retrying until the broker answers)."""
        s = self._settings
        self._client.connect_async(s.host, s.port, keepalive=s.keepalive_secs)
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect; unacknowledged messages stay with the broker for the next run."""
        self._stopping.set()
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            logger.warning("MQTT broker refused the connection: %s.", reason)
            return
        self.is_connected = True
        client.subscribe(self._settings.topic, qos=1)
        logger.info("MQTT connected; subscribed to %s (QoS 1).", self._settings.topic)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self.is_connected = False
        if not self._stopping.is_set():
            logger.warning("MQTT disconnected (%s); reconnecting with backoff.", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # Waiting for a slot here stops reading from the broker: that is the back pressure.
        while not self._intake.acquire_blocking(timeout=1.0):
            if self._stopping.is_set():
                return  # not acked: the broker redelivers it next time
        mid, qos = message.mid, message.qos

        def on_done(outcome: BatchOutcome) -> None:
            if outcome.error is None and qos > 0:
                client.ack(mid, qos)  # only now is the batch durable

        self._intake.enqueue(bytes(message.payload), self.source, on_done)
