"""A real ``redis-server`` for tests: one per session, on a free port.

Import the fixture into a test module (``from tests.redis_server import
redis_server``) to use it. Tests skip only when the binary is missing
(CI installs it, so CI never skips). The server runs in the foreground
(``--daemonize no``) as our child and is stopped by its pid; ``kill()`` and
``start()`` let a test restart it on the same port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import txredisapi

BINARY = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
)
READY = b"Ready to accept connections"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process we own; ``port`` stays the same across restarts."""

    def __init__(self, binary: str, port: int, workdir: Path) -> None:
        self.binary = binary
        self.port = port
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """A Twisted client endpoint string for this server."""
        return f"tcp:host=127.0.0.1:port={self.port}"

    def start(self, timeout: float = 10.0, persist: bool = False) -> None:
        """Start it and return once it accepts connections (it says so on stdout).

        ``persist``: with an append-only file fsynced on every write, loaded
        when it starts again with ``persist`` (without, it starts empty)."""
        assert self.process is None, "already running"
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if persist else [
            "--appendonly", "no"
        ]
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", *aof, "--daemonize", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        ready = threading.Event()
        output: list[bytes] = []

        def drain(stream: object) -> None:  # keeps the pipe from filling, notices READY
            for line in iter(self.process.stdout.readline, b""):  # type: ignore[union-attr]
                output.append(line)
                if READY in line:
                    ready.set()

        threading.Thread(target=drain, args=(self.process.stdout,), daemon=True).start()
        if not ready.wait(timeout):
            self.kill()
            raise RuntimeError(f"redis-server did not start: {b''.join(output)[-2000:]!r}")

    def kill(self) -> None:
        """SIGKILL, like a crash; returns once the process is reaped."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            os.kill(process.pid, sig)
        process.wait(timeout=10)

    async def publish(self, channel: str, message: str) -> int:
        """PUBLISH through a fresh connection; the number of receivers."""
        conn = await txredisapi.Connection("127.0.0.1", self.port, reconnect=False)
        try:
            return int(await conn.publish(channel, message))
        finally:
            await conn.disconnect()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if BINARY is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(BINARY, free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, which it may kill, stop or restart."""
    if BINARY is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(BINARY, free_port(), tmp_path)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        os.kill(server.process.pid, signal.SIGCONT)  # in case the test left it stopped
    server.kill()
