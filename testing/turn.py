"""A real TURN server for tests: Debian's coturn on 127.0.0.1 with the TURN REST API (use-auth-secret), relaying
to loopback peers (everything in the test namespace is on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from testing.fake_services import free_port
from testing.rtc import skip_or_fail

TURNSERVER = "turnserver"
REALM = "avatar.test"


@dataclass(frozen=True)
class Turn:
    port: int
    secret: str
    log: Path

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def coturn(workdir: Path, secret: str = "turn-test-secret-0123456789", timeout: float = 10.0) -> Iterator[Turn]:
    """coturn on a free port of 127.0.0.1 (UDP and TCP), stopped on exit."""
    binary = shutil.which(TURNSERVER)
    if binary is None:
        skip_or_fail("coturn's turnserver is missing: apt-get install -y coturn")
    port = free_port()
    relay = free_port()  # relay ports from here on: a range of its own, away from the ephemeral ones in use
    log = workdir / "turnserver.log"
    cmd = [
        binary,
        "-n",
        "--listening-ip",
        "127.0.0.1",
        "--relay-ip",
        "127.0.0.1",
        "--listening-port",
        str(port),
        "--min-port",
        str(relay),
        "--max-port",
        str(relay + 200),
        "--use-auth-secret",
        "--static-auth-secret",
        secret,
        "--realm",
        REALM,
        "--fingerprint",
        "--allow-loopback-peers",
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--no-multicast-peers",
        "--userdb",
        str(workdir / "turndb"),
        "--pidfile",
        str(workdir / "turnserver.pid"),
        "--log-file",
        str(log),
        "--simple-log",
        "--no-stdout-log",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not _listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"turnserver did not start (exit {proc.poll()}):\n{text}")
            time.sleep(0.05)
        yield Turn(port, secret, log)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
