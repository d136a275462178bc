"""Run `hopper serve` as a real subprocess for end-to-end tests.

Start it on a config file, wait for ``GET /health``, kill it (SIGKILL) or stop it (SIGTERM),
restart it on the same port and config; its stdout and stderr go to one log file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from hopper.testing import free_port, write_config

__all__ = ["HopperProcess", "WorkerProcess", "free_port", "write_config"]

logger = logging.getLogger(__name__)


class HopperProcess:
    """One `hopper serve --config FILE` process that can be killed and started again."""

    command: tuple[str, ...] = ("serve",)

    def __init__(self, config: Path, port: int, log_path: Path) -> None:
        self.config = config
        self.port = port
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        self.starts = 0
        self.kills = 0
        self._proc: subprocess.Popen[bytes] | None = None
        # HOPPER_* variables outrank the config file: keep the caller's out of the server.
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("HOPPER_")}

    @property
    def pid(self) -> int:
        """Return the server's process id."""
        assert self._proc is not None, "the server was never started"
        return self._proc.pid

    @property
    def running(self) -> bool:
        """Tell whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        """Start the server and wait until /health answers 200."""
        assert not self.running, "the server is already running"
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n--- start #{self.starts} ---\n".encode())
            log.flush()
            self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and CLI
                [sys.executable, "-m", "hopper", *self.command, "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
            )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        """Poll GET /health until it answers 200; fail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, timeout=1.0) as client:
            while True:
                if not self.running:
                    raise RuntimeError(f"hopper serve exited early:\n{self.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/health").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"hopper serve not ready in {timeout} s:\n{self.log_tail()}")
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the server and reap it: no shutdown code runs."""
        assert self._proc is not None and self.running, "the server is not running"
        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(10)
        self.kills += 1

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM the server (graceful shutdown) and return its exit code."""
        assert self._proc is not None, "the server was never started"
        if self.running:
            self._proc.send_signal(signal.SIGTERM)
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)
            raise

    def close(self) -> None:
        """Kill the server if it still runs (test teardown)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)

    def log_tail(self, chars: int = 6000) -> str:
        """Return the end of the server's combined output."""
        if not self.log_path.exists():
            return "(no output)"
        return self.log_path.read_text(errors="replace")[-chars:]

    @contextlib.contextmanager
    def log_on_failure(self) -> Iterator[None]:
        """Log the server's output when the block fails (pytest shows it with the failure)."""
        try:
            yield
        except BaseException:
            logger.error("hopper serve output (%s):\n%s", self.log_path, self.log_tail())
            raise


class WorkerProcess(HopperProcess):
    """One `hopper worker NAME --config FILE` process; ready once its log says it started."""

    def __init__(self, config: Path, name: str, log_path: Path) -> None:
        super().__init__(config, 0, log_path)
        self.command = ("worker", name)
        self.name = name

    def wait_ready(self, timeout: float) -> None:
        """Wait for the worker's start line in its log for this start."""
        deadline = time.monotonic() + timeout
        marker = f"--- start #{self.starts} ---"
        while True:
            if not self.running:
                raise RuntimeError(f"hopper worker exited early:\n{self.log_tail()}")
            text = self.log_path.read_text(errors="replace")
            if f"Worker {self.name} started" in text.rpartition(marker)[2]:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"hopper worker not ready in {timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)
