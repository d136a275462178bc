"""The analytics API in a process of its own, on ``server.api_port``.

In the node's process, API requests share one interpreter with ingest: at 10,000 events/s
a request that costs 3 ms waits behind decoding and commits, and the 99th percentile
reaches 85-118 ms. A second process has its own interpreter, and the kernel shares the
cores between the two far more finely than threads share one interpreter (p99 34-42 ms in
``bench/bench_api.py``). It reads the same store (SQLite in WAL mode lets readers run
beside the writer; PostgreSQL is a server) and checks tokens against the same table.

What only the node's process knows reaches it over its standard input: the writer's
figures for ``/v1/devops/ingest``, sent every quarter second. The live monitor
(``/v1/monitor``) stays on the main port: its board lives in the node. The main port goes
on serving the whole API too.

``ApiProcess`` (in the node) starts the process (``python -m hopper.edge.api.process``: a
new interpreter, not a fork of one with threads), hands it the settings over that pipe
(never the environment or a command line, which other users could read), restarts it with
a growing pause if it dies, and stops it with the node. The pipe's end (the node's process
gone, however it went) stops the API process too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import IO, Any

import httpx
from pydantic import SecretStr

from hopper.config import HopperSettings
from hopper.edge.api.devops import IntakeFigures
from hopper.observe.metrics import HopperMetrics

logger = logging.getLogger(__name__)

# last_commit_ms (-1: none yet), queue depth, capacity, queued bytes
_FIGURES = struct.Struct("<qqqq")
_LENGTH = struct.Struct("<I")
_PUBLISH_SECS = 0.25
_RESTART_PAUSES = (1.0, 2.0, 5.0, 10.0, 30.0)
_STOP_SECS = 10.0


def _settings_json(settings: HopperSettings, store_backend: str) -> bytes:
    """The settings as the API process rebuilds them: JSON with the secrets' values."""

    def plain(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        return str(value)  # paths

    given = {"settings": settings.model_dump(), "store_backend": store_backend}
    return json.dumps(given, default=plain).encode()


def _pack(figures: IntakeFigures) -> bytes:
    last = -1 if figures.last_commit_ms is None else figures.last_commit_ms
    return _FIGURES.pack(last, figures.depth, figures.capacity, figures.queue_bytes)


class ApiProcess:
    """Runs and watches the API process of a node (one thread: send figures, wait, restart)."""

    def __init__(self, settings: HopperSettings, figures: Callable[[], IntakeFigures]) -> None:
        self._settings = settings
        self._figures = figures
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.last_exit: str | None = None

    @property
    def port(self) -> int:
        """The port the API process serves."""
        assert self._settings.server.api_port is not None
        return self._settings.server.api_port

    @property
    def is_running(self) -> bool:
        """Tell whether the API process is alive now."""
        return self._process is not None and self._process.poll() is None

    async def problem(self) -> str | None:
        """Return None if the API process answers its ``/health`` now, else what is wrong."""
        host = self._settings.server.host
        # Listening on every address: ask it on the loopback one.
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
        url = f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/health"
        try:
            async with httpx.AsyncClient(timeout=1.0) as client:
                answer = await client.get(url)
            if answer.status_code == 200 and answer.json().get("role") == "analytics-api":
                return None
            problem = f"its port answers {answer.status_code}, not as the API process"
        except (httpx.HTTPError, ValueError) as exc:
            problem = f"it does not answer on port {self.port} ({type(exc).__name__})"
        if not self.is_running and self.last_exit is not None:
            problem += f"; it {self.last_exit}"
        return problem

    def start(self) -> None:
        """Start the process and the thread that watches it."""
        self._thread = threading.Thread(target=self._watch, name="hopper-api-process", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the process (SIGTERM: it finishes its requests) and the watching thread."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=_STOP_SECS + 10)

    def _spawn(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "hopper.edge.api.process"], stdin=subprocess.PIPE
        )
        logger.info("Analytics API process %d serving port %d.", process.pid, self.port)
        return process

    def _feed(self, process: subprocess.Popen[bytes]) -> None:
        """Send the settings, then the writer's figures until the process ends or must stop."""
        assert process.stdin is not None
        data = _settings_json(self._settings, self._figures().store_backend)
        try:
            process.stdin.write(_LENGTH.pack(len(data)) + data)
            while process.poll() is None and not self._stopping.is_set():
                process.stdin.write(_pack(self._figures()))
                process.stdin.flush()
                self._stopping.wait(_PUBLISH_SECS)
        except OSError:  # the process went: its pipe broke
            pass

    def _watch(self) -> None:
        pause_index = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                self._process = process = self._spawn()
            except OSError as exc:  # e.g. out of processes or memory: try again later
                self.last_exit = f"could not start: {exc}"
                logger.error("Cannot start the analytics API process: %s", exc)
            else:
                self._feed(process)
                if self._stopping.is_set():
                    self._terminate(process)
                    return
                process.wait()
                _close_pipe(process)
                self.last_exit = f"exited with code {process.returncode}"
                logger.warning("The analytics API process %s.", self.last_exit)
            if time.monotonic() - started > 60:
                pause_index = 0  # it ran a while: the next failure starts the pauses again
            pause = _RESTART_PAUSES[min(pause_index, len(_RESTART_PAUSES) - 1)]
            pause_index += 1
            if self._stopping.wait(pause):
                return
            self.restarts += 1

    def _terminate(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(_STOP_SECS)
            except subprocess.TimeoutExpired:
                logger.warning("The API process did not stop in %g s; killing it.", _STOP_SECS)
                process.kill()
                process.wait(5)
        _close_pipe(process)


def _close_pipe(process: subprocess.Popen[bytes]) -> None:
    if process.stdin is not None:
        with contextlib.suppress(OSError):  # a broken pipe's buffered bytes cannot go
            process.stdin.close()


# -- in the API process --------------------------------------------------------------------


class NodeFigures:
    """The writer's figures as the node last sent them (read by ``/v1/devops/ingest``)."""

    def __init__(self, store_backend: str) -> None:
        self.store_backend = store_backend
        self._values = (-1, 0, 0, 0)

    def read(self) -> IntakeFigures:
        """Return the figures last received."""
        last, depth, capacity, queued = self._values
        return IntakeFigures(
            None if last < 0 else last, depth, capacity, queued, self.store_backend
        )

    def follow(self, stream: IO[bytes]) -> None:
        """Take each record the node sends; at the pipe's end, stop this process."""
        while len(record := stream.read(_FIGURES.size)) == _FIGURES.size:
            self._values = _FIGURES.unpack(record)
        logger.info("The node's pipe closed; the analytics API process stops.")
        os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    """The API process: serve the analytics API on ``server.api_port`` until told to stop."""
    import uvicorn

    from hopper.edge.server import ConnectionGuard, uvicorn_config
    from hopper.observe.logs import configure_logging

    stdin = sys.stdin.buffer
    (length,) = _LENGTH.unpack(stdin.read(_LENGTH.size))
    given = json.loads(stdin.read(length))  # from the node that started this process
    settings = HopperSettings(**given["settings"])
    configure_logging(settings.log.level, settings.log.format)
    figures = NodeFigures(given["store_backend"])
    metrics = HopperMetrics()  # one registry: the connection limits' figures too
    app = create_api_app(settings, figures, metrics)
    config = uvicorn_config(app, settings, ConnectionGuard(settings, metrics))
    assert settings.server.api_port is not None
    config.port = settings.server.api_port
    server = uvicorn.Server(config)
    threading.Thread(target=figures.follow, args=(stdin,), name="hopper-node", daemon=True).start()
    code = 0
    try:
        server.run()
    except SystemExit as exc:  # uvicorn's way out when it cannot bind the port
        code = exc.code if isinstance(exc.code, int) else 1
    if not server.started:
        code = code or 1
    logging.shutdown()
    sys.stderr.flush()
    # Not a normal interpreter exit: the thread reading the pipe holds stdin's lock.
    os._exit(code)


def create_api_app(settings: HopperSettings, figures: NodeFigures, metrics: HopperMetrics) -> Any:
    """The API process's app: ``/v1`` (the analytics API), its own ``/health`` and ``/metrics``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Mount, Route

    from hopper.access import Authenticator, AuthError, Scope
    from hopper.clock import SystemClock
    from hopper.edge.api import AnalyticsApi, create_api
    from hopper.ingest.http import auth_error_response, authenticate_request
    from hopper.store.engine import engine_for

    engine = engine_for(settings.store)
    authenticator = Authenticator(settings.auth, settings.store, metrics)
    shared = AnalyticsApi(
        engine,
        authenticator,
        SystemClock(),
        figures.read,
        None,
        metrics,
        monitor_off="the live monitor is served on the node's main port, not the API's",
    )

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "pass", "role": "analytics-api", "pid": os.getpid()})

    async def metrics_page(request: Request) -> Response:
        # This process's own: its requests' times and its token refusals.
        if not authenticator.is_metrics_open:
            try:
                await authenticate_request(request, authenticator, Scope.METRICS)
            except AuthError as exc:
                return auth_error_response(exc)
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            authenticator.close()
            engine.dispose()

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/metrics", metrics_page),
            Mount("/v1", create_api(shared)),
        ],
        lifespan=lifespan,
    )


if __name__ == "__main__":
    main()
