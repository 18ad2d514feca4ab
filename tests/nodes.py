"""Real pushd nodes (``twistd -n pushd``, ``broker = redis://``) on one redis-server.

A :class:`Node` is one process; a test can SIGKILL it and start it again
(on a port freshly picked: the old one may have been taken meanwhile as the
local end of some connection; clients read ``port`` when they connect). It
counts as started once it listens and both of its Redis connections
(commands, pub/sub) said they are up: every wait is on the process's own
output, never a sleep.

:class:`HTTP` is a keep-alive raw HTTP/1.1 client for publishing and polling
fast and in order (one request at a time per connection), and the parsers
turn each transport's bytes into the same list of events:
``("message", id, data)``, ``("reset", cursor)``, ``("closed", None)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost

from tests.clients import RawHTTP, dechunk, split_response
from tests.helpers import parse_sse
from tests.process import Child, bounded, free_port, spawn_pushd
from tests.redis_server import RedisServer
from tests.test_ops_support import ws_frames

CONNECTED = rb"redis %s redis://[^ ]*: connected"


class Node:
    """One pushd process on ``port`` (picked anew at each start but the first),
    on the Redis broker of ``redis``."""

    def __init__(self, tmp_path: Path, redis: RedisServer, name: str, extra: str = "") -> None:
        self.dir = tmp_path / name
        self.dir.mkdir()
        self.redis = redis
        self.name = name
        self.port = free_port()
        self.extra = extra
        self.url = f"http://127.0.0.1:{self.port}"
        self.child: Child | None = None
        self.process: Any = None
        self.starts = 0

    async def start(self) -> Node:
        """Spawn it; returns once it listens and is connected to Redis."""
        if self.starts:
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
        config = (
            f'source = []\nbroker = "redis://127.0.0.1:{self.redis.port}/0"\n'
            f"[drain]\ntimeout = 1\n{self.extra}"
        )
        self.child, self.process = spawn_pushd(
            self.dir, "--listen", f"tcp:{self.port}:interface=127.0.0.1", config=config
        )
        self.starts += 1
        await self.child.wait_for(rb"PushdSite starting on %d" % self.port)
        await self.connected()
        return self

    async def connected(self) -> None:
        """Fires once both Redis links of this start have said ``connected``."""
        assert self.child is not None
        await self.child.wait_for(CONNECTED % b"commands")
        await self.child.wait_for(CONNECTED % b"pub/sub")

    def signal(self, name: str) -> None:
        self.process.signalProcess(name)

    async def kill(self) -> None:
        """SIGKILL, like a crash; returns once it is gone."""
        assert self.child is not None
        if not self.child.exited.called:
            self.signal("KILL")
        await bounded(self.child.exited)

    def stop(self) -> None:
        if self.child is not None and not self.child.exited.called:
            self.signal("KILL")

    def warnings(self, n: int = 10) -> list[str]:
        """The last ``n`` warnings and errors of its current run, for a failure's message."""
        text = self.child.output.decode(errors="replace") if self.child is not None else ""
        lines = [line for line in text.splitlines() if "#warn]" in line or "#error]" in line]
        return [f"{self.name}: {line}" for line in lines[-n:]]


# -- a keep-alive HTTP client --------------------------------------------------------
def complete(data: bytes) -> int:
    """The length of the first whole response in ``data`` (Content-Length or
    chunked), or 0 while it is not all there."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return 0
    headers = split_response(data)[1]
    start = len(head) + 4
    if "content-length" in headers:
        end = start + int(headers["content-length"])
        return end if len(data) >= end else 0
    if headers.get("transfer-encoding") == "chunked":
        marker = body.find(b"\r\n0\r\n\r\n")
        if body.startswith(b"0\r\n\r\n"):
            return start + 5
        return start + marker + 7 if marker >= 0 else 0
    return 0


class HTTP:
    """A keep-alive connection that sends one request at a time, in order."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.raw: RawHTTP | None = None

    async def open(self) -> HTTP:
        self.raw = await RawHTTP.open(self.port, b"")
        return self

    async def request(
        self, method: str, path: str, body: bytes = b"", timeout: float = 10.0,
        headers: tuple[str, ...] = (),
    ) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body (dechunked); a fresh connection if the last one ended."""
        if self.raw is None or self.raw.ended:
            await self.open()
        raw = self.raw
        assert raw is not None
        raw.data = b""
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
        if body or method == "POST":
            lines += ["Content-Type: text/plain", f"Content-Length: {len(body)}"]
        raw.protocol.transport.write("\r\n".join([*lines, "", ""]).encode() + body)
        try:
            data = await raw.until(complete, timeout)
        except BaseException as e:  # ended first, or no answer in time: not reused
            raw.abort()
            self.raw = None
            if isinstance(e, AssertionError):
                raise ConnectionLost(f"{method} {path}: the connection ended") from None
            raise
        size = complete(data)
        status, head, payload = split_response(data[:size])
        if head.get("transfer-encoding") == "chunked":
            payload = b"".join(dechunk(payload)[0])
        if head.get("connection") == "close":
            raw.close()
            self.raw = None
        return int(status.split()[1]), head, payload

    def close(self) -> None:
        if self.raw is not None:
            self.raw.close()
            self.raw = None


# -- what each transport said, as one list of events -------------------------------
def sse_events(raw: bytes) -> list[tuple[str, Any, Any]]:
    body = b"".join(dechunk(split_response(raw)[2])[0])
    out: list[tuple[str, Any, Any]] = []
    for event in parse_sse(body.decode()):
        if "retry" in event:
            continue
        if event["event"] == "reset":
            out.append(("reset", json.loads(event["data"])["cursor"], None))
        elif event["event"] == "closed":
            out.append(("closed", None, None))
        else:
            out.append(("message", event["id"], event["data"]))
    return out


def frame_events(frames: list[Any]) -> list[tuple[str, Any, Any]]:
    """NDJSON lines or WebSocket frames (the same objects) as events."""
    out: list[tuple[str, Any, Any]] = []
    for obj in frames:
        kind = obj.get("type")
        if kind == "message":
            out.append(("message", obj["id"], obj["data"]))
        elif kind == "reset":
            out.append(("reset", obj["cursor"], None))
        elif kind == "closed":
            out.append(("closed", None, None))
    return out


def ndjson_events(raw: bytes) -> list[tuple[str, Any, Any]]:
    body = b"".join(dechunk(split_response(raw)[2])[0])
    lines = [line for line in body.split(b"\n") if line.strip()]
    return frame_events([json.loads(line) for line in lines])


def ws_events(raw: bytes) -> list[tuple[str, Any, Any]]:
    return frame_events([json.loads(p) for op, p in ws_frames(raw) if op == 0x1])


def message_ids(events: list[tuple[str, Any, Any]]) -> list[str]:
    return [e[1] for e in events if e[0] == "message"]


def fired(d: Deferred[Any]) -> Deferred[bool]:
    """True when ``d`` fires, False when it fails (a timeout): for bounded probes."""
    return d.addCallbacks(lambda _: True, lambda _: False)


def showing(parse: Any, mid: str) -> Any:
    """A predicate on a client's bytes: ``parse`` of them has message ``mid``."""
    return lambda data: mid in message_ids(parse(data))
