"""Helpers for the operations tests: a real ``twistd -n pushd`` child, raw WebSocket
frames, Prometheus text, free ports. (No tests here; the name keeps it ours.)

Everything waits on Deferreds fired by the child's output, its exit, or
bytes arriving; nothing sleeps.
"""

from __future__ import annotations

import base64
import os
import struct
from typing import Any

import treq
from prometheus_client.parser import text_string_to_metric_families

from tests.clients import RawHTTP
from tests.process import (  # noqa: F401 - shared with other test modules
    ROOT,
    TIMEOUT,
    TWISTD,
    Child,
    bounded,
    free_port,
    spawn_pushd,
    started_port,
    stop,
)


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
