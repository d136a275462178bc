"""Start real servers of our own for a test (loopback only), on free ports.

Used by tests that need a server configured their way (a Mosquitto with a password file
and an ACL) rather than the shared one on its standard port.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from hopper.testing import free_port, run_tansu, tansu_binary, wait_for_port


def require_binary(name: str, *candidates: str) -> str:
    """Return the path of a server binary; skip (or fail in CI) when it is absent."""
    for path in (shutil.which(name), *candidates):
        if path and os.access(path, os.X_OK):
            return path
    message = f"{name} is not installed (scripts/services installs it)"
    if os.environ.get("HOPPER_REQUIRE_SERVICES") == "1":
        pytest.fail(message + "; HOPPER_REQUIRE_SERVICES=1 forbids skipping")
    pytest.skip(message)


@dataclass
class Mosquitto:
    """A Mosquitto broker of this test's own."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path


def make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """Make a throw-away CA and a certificate for 127.0.0.1; return (ca, cert, key)."""
    openssl = require_binary("openssl")
    ca_key, ca, key, csr, cert = (
        directory / name for name in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt")
    )
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    for command in (
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
         "-out", str(ca), "-days", "1", "-subj", "/CN=hopper-test-ca"],
        [openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
         "-subj", "/CN=127.0.0.1"],
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-out", str(cert), "-days", "1", "-extfile", str(ext)],
    ):  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)  # noqa: S603
    return ca, cert, key


@contextlib.contextmanager
def mosquitto(
    directory: Path, *, users: Mapping[str, str], acl: str, tls: bool = False
) -> Iterator[Mosquitto]:
    """Run a broker that needs a username and password and enforces ``acl`` (TLS too)."""
    broker = require_binary("mosquitto", "/usr/sbin/mosquitto")
    passwd = require_binary("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
    password_file = directory / "passwords"
    password_file.touch()
    for user, password in users.items():
        subprocess.run(  # noqa: S603 - a test's own broker tool
            [passwd, "-b", str(password_file), user, password], check=True, capture_output=True
        )
    password_file.chmod(0o600)
    acl_file = directory / "acl"
    acl_file.write_text(acl)
    acl_file.chmod(0o600)
    port = free_port()
    config = directory / "mosquitto.conf"
    # Started as root, Mosquitto drops to user "mosquitto", who cannot read this test's
    # files: stay the user who runs the tests.
    stay = f"user {pwd.getpwuid(os.geteuid()).pw_name}\n"
    tls_lines = ""
    if tls:
        ca, cert, key = make_tls_files(directory)
        tls_lines = f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
    config.write_text(
        f"listener {port} 127.0.0.1\n{tls_lines}allow_anonymous false\n"
        f"password_file {password_file}\nacl_file {acl_file}\npersistence false\n{stay}"
    )
    log = directory / "mosquitto.log"
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603
            [broker, "-c", str(config), "-v"], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for_port(port)
        yield Mosquitto(port, process, log)
    finally:
        process.terminate()
        process.wait(10)


@dataclass
class Tansu:
    """A Tansu broker (Kafka protocol, memory storage) of this test's own."""

    port: int
    log: Path

    @property
    def bootstrap(self) -> str:
        """Return the bootstrap address for Kafka clients."""
        return f"127.0.0.1:{self.port}"


@contextlib.contextmanager
def tansu(directory: Path) -> Iterator[Tansu]:
    """Run a Tansu 0.6 broker on a free loopback port; skip (or fail in CI) without it."""
    binary = tansu_binary()
    require_binary("tansu", *([str(binary)] if binary is not None else []))
    log = directory / "tansu.log"
    with run_tansu(log) as port:
        yield Tansu(port, log)
