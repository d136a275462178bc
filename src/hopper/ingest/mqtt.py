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
from hopper.errors import BackendMissing, ConfigError
from hopper.ingest.base import BatchOutcome
from hopper.ingest.intake import Intake
from hopper.pipeline.stage import Origin

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
        # True once the broker has granted the subscription on the current connection.
        self.is_connected = False
        # Which connection a message came on: a PUBACK belongs to that connection only.
        self._connection = 0
        self._subscribe_mid: int | None = None
        self._ack_lock = threading.Lock()
        self._pending = 0  # messages handed to the intake and not yet completed
        self._pending_done = threading.Condition(self._ack_lock)
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
        if settings.tls or settings.tls_ca_file is not None:
            client.tls_set(ca_certs=str(settings.tls_ca_file) if settings.tls_ca_file else None)
        # The topic level that names the school: the first "+" of the subscription filter.
        levels = settings.topic.split("/")
        self._school_level = levels.index("+") if "+" in levels else None
        if settings.require_topic_school and self._school_level is None:
            raise ConfigError(
                "mqtt.require_topic_school needs a '+' level in mqtt.topic (hopper/+/events)"
            )
        client.reconnect_delay_set(settings.reconnect_min_secs, settings.reconnect_max_secs)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

    def start(self) -> None:
        """Connect in the background (retrying until the broker answers)."""
        s = self._settings
        self._client.connect_async(s.host, s.port, keepalive=s.keepalive_secs)
        self._client.loop_start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking messages, acknowledge those already committed, then disconnect.

        Unacknowledged messages stay with the broker (persistent session) for the next run.
        """
        self._stopping.set()
        with self._pending_done:
            # PUBACKs queued before the DISCONNECT are written before it: without this wait a
            # clean stop would leave committed messages to be redelivered on the next start.
            if not self._pending_done.wait_for(lambda: self._pending == 0, timeout):
                logger.warning(
                    "MQTT stopping with %d messages not yet committed; "
                    "the broker will deliver them again.",
                    self._pending,
                )
        self._client.disconnect()
        self._client.loop_stop()
        self.is_connected = False

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            logger.warning("MQTT broker refused the connection: %s.", reason)
            return
        # Subscribing again when the session is present is harmless (the broker replaces
        # the subscription and keeps the queue) and repairs a session the broker lost.
        _, self._subscribe_mid = client.subscribe(self._settings.topic, qos=1)
        logger.info(
            "MQTT connected (session present: %s); subscribing to %s (QoS 1).",
            flags.session_present,
            self._settings.topic,
        )

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        logger.warning(
            "MQTT broker %s:%s unreachable; retrying with backoff.",
            self._settings.host,
            self._settings.port,
        )

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[Any], properties: Any
    ) -> None:
        if mid != self._subscribe_mid:
            return
        granted = reasons[0] if reasons else None
        if granted is None or granted.is_failure:
            # Connected but refused (an ACL, say): health must not report this as working.
            logger.error("MQTT broker refused the subscription to %s.", self._settings.topic)
            return
        if granted.value < 1:
            logger.warning(
                "MQTT broker granted QoS %d on %s: messages can be lost.",
                granted.value,
                self._settings.topic,
            )
        self.is_connected = True
        logger.info("MQTT subscribed to %s.", self._settings.topic)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self.is_connected = False
        with self._ack_lock:
            # From now on, acks of messages of the lost connection are not sent: paho would
            # put them on the next connection (possibly ahead of its CONNECT); the broker
            # delivers those messages again instead, and dedup absorbs them.
            self._connection += 1
        if not self._stopping.is_set():
            logger.warning("MQTT disconnected (%s); reconnecting with backoff.", reason)

    def _origin(self, topic: str) -> Origin:
        if not self._settings.require_topic_school or self._school_level is None:
            return Origin(self.source, topic)
        levels = topic.split("/")
        school = levels[self._school_level] if self._school_level < len(levels) else ""
        return Origin(self.source, topic, frozenset({school}))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        payload, rejection = self._intake.screen(bytes(message.payload))
        origin = self._origin(message.topic)
        # Waiting for admission here stops reading from the broker: that is the back
        # pressure. Each topic (one per school, or per device) has its fair share.
        ticket = self._intake.admit_blocking(
            message.topic, len(payload), is_abandoned=self._stopping.is_set
        )
        if ticket is None:
            return  # stopping: not acked, the broker redelivers it next time
        mid, qos = message.mid, message.qos
        with self._ack_lock:
            # Checked under the lock stop() waits with: a message is either counted before
            # stop() looks, or left to the broker.
            if self._stopping.is_set():
                self._intake.release(ticket)
                return
            connection = self._connection
            self._pending += 1

        def on_done(outcome: BatchOutcome) -> None:
            # Runs in the writer thread; paho's ack() only queues the packet (thread-safe).
            with self._ack_lock:
                self._pending -= 1
                # Only now is the batch durable. A failed commit is not acked: the broker
                # delivers the message again after the next reconnect.
                if outcome.error is None and qos > 0 and connection == self._connection:
                    client.ack(mid, qos)
                self._pending_done.notify_all()

        try:
            self._intake.enqueue(
                payload, self.source, on_done, ticket=ticket, rejection=rejection, origin=origin
            )
        except Exception:
            # An exception escaping a callback would end paho's network thread and, with
            # it, this source. Left unacknowledged, the message comes again on reconnect.
            logger.exception("MQTT message %d could not be queued; not acknowledged.", mid)
            with self._ack_lock:
                self._pending -= 1
                self._pending_done.notify_all()
