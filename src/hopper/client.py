"""A small Python client: build event batches and send them over HTTP, WebSocket or MQTT.

Tests, the demo and the benchmarks use it; apps can use it as a reference.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import httpx
import orjson

from hopper.events._pb import events_pb2 as pb
from hopper.events.protobuf import EVENT_TYPES, encode_batch

__all__ = [
    "EVENT_TYPES",
    "HopperBusy",
    "HttpSender",
    "MqttSender",
    "WebSocketSender",
    "auth_headers",
    "encode_batch",
    "event_from_json",
    "is_busy",
    "make_event",
]


def make_event(
    event_type: str,
    fields: Mapping[str, Any] | None = None,
    *,
    username: str,
    device_id: str,
    app_time_ms: int | None = None,
    school_id: str = "",
    app_version: str = "",
    platform: str = "android",
    session_id: str = "",
) -> pb.Event:
    """Build one ``hopper.events.v1.Event`` with the payload ``event_type`` set."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}; known: {', '.join(EVENT_TYPES)}")
    event = pb.Event(
        username=username,
        device_id=device_id,
        school_id=school_id,
        app_time_ms=time.time_ns() // 1_000_000 if app_time_ms is None else app_time_ms,
        app_version=app_version,
        platform=platform,
        session_id=session_id,
    )
    getattr(event, event_type).SetInParent()
    for name, value in (fields or {}).items():
        setattr(getattr(event, event_type), name, value)
    return event


_ENVELOPE_FIELDS = ("school_id", "app_version", "platform", "session_id")


def event_from_json(obj: Any) -> pb.Event:
    """Build an event from its JSON form, the shape ``lp-events`` publishes.

    ``{"type": "page_viewed", "username": ..., "device_id": ..., "payload": {...}}`` with
    optional ``school_id``, ``app_time_ms`` (default: now), ``app_version``, ``platform``
    and ``session_id``. Raises ValueError with what is wrong.
    """
    if not isinstance(obj, dict):
        raise ValueError("each line must be a JSON object")
    for name in ("type", "username", "device_id"):
        if not isinstance(obj.get(name), str) or not obj[name]:
            raise ValueError(f"{name!r} must be a non-empty string")
    payload = obj.get("payload") or {}
    if not isinstance(payload, dict):
        raise ValueError("'payload' must be an object")
    app_time = obj.get("app_time_ms")
    if app_time is not None and (not isinstance(app_time, int) or isinstance(app_time, bool)):
        raise ValueError("'app_time_ms' must be an integer (Unix milliseconds)")
    envelope = {name: str(obj.get(name) or "") for name in _ENVELOPE_FIELDS}
    if not envelope["platform"]:
        envelope["platform"] = "android"
    try:
        return make_event(
            obj["type"],
            payload,
            username=obj["username"],
            device_id=obj["device_id"],
            app_time_ms=app_time,
            **envelope,
        )
    except (AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f"bad event: {exc}") from exc


class HopperBusy(Exception):
    """The server applied back pressure; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"Hopper is busy; retry after {retry_after} s")
        self.retry_after = retry_after


def auth_headers(token: str | None) -> dict[str, str]:
    """Return the ``Authorization`` header for a token (none without one)."""
    return {"authorization": f"Bearer {token}"} if token else {}


def is_busy(ack: Mapping[str, Any]) -> bool:
    """Tell whether a WebSocket ack says the frame was not stored and must be resent."""
    error = ack.get("error")
    return isinstance(error, str) and error.startswith("busy")


class HttpSender:
    """Sends batches with ``POST /v1/events``."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 30.0) -> None:
        self._client = httpx.Client(base_url=base_url, timeout=timeout, headers=auth_headers(token))

    def send(self, batch: bytes | Iterable[pb.Event]) -> dict[str, Any]:
        """Send one batch; return the server's JSON answer. Raise HopperBusy on 503."""
        body = batch if isinstance(batch, bytes) else encode_batch(batch)
        response = self._client.post(
            "/v1/events", content=body, headers={"content-type": "application/x-protobuf"}
        )
        if response.status_code == 503:
            raise HopperBusy(float(response.headers.get("retry-after", "1")))
        answer: dict[str, Any] = response.json()
        answer["status_code"] = response.status_code
        return answer

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


class WebSocketSender:
    """Streams batches over ``/v1/events/ws`` with many frames in flight.

    Use ``async with WebSocketSender(url) as ws``; ``send`` returns the frame's sequence
    number, ``wait`` the server's ack for it.
    """

    def __init__(self, url: str, *, token: str | None = None, max_in_flight: int = 64) -> None:
        self.url = url
        self._headers = auth_headers(token)
        self._window = asyncio.Semaphore(max_in_flight)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._seq = 0
        self._reader: asyncio.Task[None] | None = None
        self._ws: Any = None

    async def __aenter__(self) -> WebSocketSender:
        from websockets.asyncio.client import connect

        self._ws = await connect(
            self.url, max_size=None, compression=None, additional_headers=self._headers
        )
        self._reader = asyncio.create_task(self._read_acks())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection; pending acks fail with ConnectionError."""
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        for future in self._pending.values():
            if future.done() and not future.cancelled():
                future.exception()  # the caller gave these up: no "never retrieved" noise

    async def send(self, batch: bytes) -> int:
        """Send one batch frame (waiting while the window is full); return its seq."""
        await self._window.acquire()
        self._seq += 1
        seq = self._seq
        self._pending[seq] = asyncio.get_running_loop().create_future()
        try:
            await self._ws.send(batch)
        except BaseException:
            future = self._pending.pop(seq)  # never sent: no ack will come
            if future.done():
                future.exception()  # failed by the reader, which gave its room back
            else:
                self._window.release()
            raise
        return seq

    async def wait(self, seq: int) -> dict[str, Any]:
        """Wait for the ack of frame ``seq`` (it may have arrived already)."""
        future = self._pending[seq]
        try:
            return await future
        finally:
            if future.done():
                self._pending.pop(seq, None)

    async def send_and_wait(self, batch: bytes, *, busy_retries: int = 10) -> dict[str, Any]:
        """Send one batch and wait for its ack, resending while the server says busy."""
        ack = await self.wait(await self.send(batch))
        for _ in range(busy_retries):
            if not is_busy(ack):
                break
            await asyncio.sleep(float(ack.get("retry_after_secs", 1)))
            ack = await self.wait(await self.send(batch))
        return ack

    async def _read_acks(self) -> None:
        error: BaseException = ConnectionError("connection closed before the ack")
        try:
            async for frame in self._ws:
                ack = orjson.loads(frame)
                # Kept until ``wait`` takes it: a pipelining caller may ask after it came.
                future = self._pending.get(ack["seq"])
                if future is not None and not future.done():
                    future.set_result(ack)
                self._window.release()
        except Exception as exc:  # noqa: BLE001 - the connection died: fail every pending ack
            error = exc
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError(str(error)))
                self._window.release()  # wake senders waiting for room: their send fails


class MqttSender:
    """Publishes batches to the broker with QoS 1."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        topic: str,
        client_id: str = "",
        username: str | None = None,
        password: str | None = None,
        tls_ca_file: str | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.topic = topic
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        if tls_ca_file is not None:
            self._client.tls_set(ca_certs=tls_ca_file)
        self._client.max_inflight_messages_set(1000)
        self._client.max_queued_messages_set(0)
        self._client.connect(host, port)
        self._client.loop_start()

    def publish(self, batch: bytes) -> Any:
        """Publish one batch; return paho's MQTTMessageInfo (``wait_for_publish()``)."""
        return self._client.publish(self.topic, batch, qos=1)

    def publish_all(self, batches: Sequence[bytes], timeout: float = 60.0) -> None:
        """Publish batches and wait until the broker has acknowledged every one."""
        infos = [self.publish(b) for b in batches]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            if not info.is_published():
                raise TimeoutError("the broker did not acknowledge every batch in time")

    def close(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()
