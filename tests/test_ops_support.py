"""Helpers for the operations tests: a real ``twistd -n pushd`` child, raw WebSocket
frames, Prometheus text, free ports. (No tests here; the name keeps it ours.)

Everything waits on Deferreds fired by the child's output, its exit, or
bytes arriving; nothing sleeps.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import struct
import sys
from pathlib import Path
from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from tests.clients import RawHTTP

ROOT = Path(__file__).resolve().parent.parent
TWISTD = "from twisted.scripts.twistd import run; run()"
TIMEOUT = 20.0


def bounded(d: Deferred[Any], timeout: float = TIMEOUT) -> Deferred[Any]:
    return d.addTimeout(timeout, reactor)


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (for programs that need a number)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child(ProcessProtocol):
    """A child process: its output, Deferreds on output patterns, and its exit."""

    def __init__(self) -> None:
        self.output = b""
        self.exited: Deferred[tuple[int | None, int | None]] = Deferred()
        self.exit_time: float | None = None
        self._waiting: list[tuple[re.Pattern[bytes], Deferred[re.Match[bytes]]]] = []

    def wait_for(self, pattern: bytes, timeout: float = TIMEOUT) -> Deferred[re.Match[bytes]]:
        d: Deferred[re.Match[bytes]] = Deferred()
        self._waiting.append((re.compile(pattern), d))
        self._check()
        return bounded(d, timeout)

    def outReceived(self, data: bytes) -> None:
        self.output += data
        self._check()

    errReceived = outReceived

    def _check(self) -> None:
        fire = []
        for entry in list(self._waiting):
            match = entry[0].search(self.output)
            if match:
                self._waiting.remove(entry)
                fire.append((entry[1], match))
        for d, match in fire:
            d.callback(match)

    def processEnded(self, reason: Failure) -> None:
        self.exit_time = reactor.seconds()
        for _, d in self._waiting:
            if not d.called:
                d.errback(AssertionError(f"exited first; output:\n{self.output.decode()[-3000:]}"))
        self._waiting = []
        self.exited.callback((reason.value.exitCode, reason.value.signal))

    def log(self) -> str:
        return self.output.decode(errors="replace")[-4000:]


def spawn_pushd(
    tmp_path: Path,
    *args: str,
    config: str = "source = []\n",
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    logger: str = "pushd.logs.text_logger",
) -> tuple[Child, Any]:
    """``twistd -n --logger <logger> pushd --config <config> <args>``; no sources by default.

    The text logger at info level keeps Autobahn's debug chatter out of the log.
    """
    path = tmp_path / "pushd.toml"
    path.write_text(config)
    child = Child()
    environ = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    if "NOTIFY_SOCKET" not in (env or {}):
        environ.pop("NOTIFY_SOCKET", None)  # never tell a real supervisor about a test
    argv = [*(prefix or []), sys.executable, "-c", TWISTD, "-n", "--pidfile=", f"--logger={logger}", "pushd",
            "--config", str(path), *args]
    process = reactor.spawnProcess(child, argv[0], argv, env=environ, path=str(tmp_path))
    return child, process


async def started_port(child: Child) -> int:
    """The port of the first ``tcp:0`` listener, from twistd's log."""
    return int((await child.wait_for(rb"PushdSite starting on (\d+)")).group(1))


def stop(child: Child, process: Any) -> None:
    if not child.exited.called:
        try:
            process.signalProcess("KILL")
        except Exception:  # already gone
            pass


# -- WebSocket, raw ----------------------------------------------------------------
def ws_handshake(path: str, host: str = "127.0.0.1") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def ws_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of the complete unmasked server frames after the 101 head."""
    _, sep, body = data.partition(b"\r\n\r\n")
    frames = []
    while sep and len(body) >= 2:
        opcode, length = body[0] & 0x0F, body[1] & 0x7F
        offset = 2
        if length == 126:
            if len(body) < 4:
                break
            length, offset = struct.unpack("!H", body[2:4])[0], 4
        elif length == 127:
            if len(body) < 10:
                break
            length, offset = struct.unpack("!Q", body[2:10])[0], 10
        if len(body) < offset + length:
            break
        frames.append((opcode, body[offset : offset + length]))
        body = body[offset + length :]
    return frames


def ws_close_code(data: bytes) -> int | None:
    for opcode, payload in ws_frames(data):
        if opcode == 0x8:
            return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 1005
    return None


def ws_client_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (payload under 126 bytes)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


async def ws_open(port: int, path: str) -> RawHTTP:
    client = await RawHTTP.open(port, ws_handshake(path))
    await client.until(lambda d: b"\r\n\r\n" in d)
    assert client.data.startswith(b"HTTP/1.1 101"), client.data
    return client


# -- HTTP and metrics ---------------------------------------------------------------
async def get(url: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    response = await bounded(treq.get(url, persistent=False, **kw))
    body = await bounded(response.content())
    headers = {k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()}
    return response.code, headers, body


async def post(url: str, data: bytes, **kw: Any) -> tuple[int, bytes]:
    response = await bounded(treq.post(url, data=data, persistent=False, **kw))
    return response.code, await bounded(response.content())


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``url``'s Prometheus text: (name, sorted labels) → value."""
    code, headers, body = await get(url)
    assert code == 200, body
    assert headers["content-type"].startswith("text/plain"), headers
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]
