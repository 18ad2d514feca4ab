"""The benchmark's floor server (``bench/bare/server.py``) does what the report says.

It is the reference the report compares pushd with, so its bytes on the
wire are checked like pushd's: the SSE head, one frame per publish to each
subscriber of that channel only, in order, and pipelined publishes answered
in order.
"""

from __future__ import annotations

from typing import Callable

import pytest_twisted
from twisted.internet import reactor

from bench.bare.server import HEAD, Bare, chunk
from tests.clients import RawHTTP, get_request


def post(channel: str, body: bytes) -> bytes:
    return b"POST /pub/%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
        channel.encode(), len(body), body)


def at_least(n: int) -> Callable[[bytes], bool]:
    return lambda data: len(data) >= n


@pytest_twisted.ensureDeferred
async def test_publishes_reach_every_subscriber_of_the_channel_in_order() -> None:
    bare = Bare()
    listener = reactor.listenTCP(0, bare, interface="127.0.0.1")
    port = listener.getHost().port
    conns: list[RawHTTP] = []
    try:
        head = HEAD + chunk(b"retry: 3000\n\n")
        for channel in ("a", "a", "b"):
            conns.append(await RawHTTP.open(port, get_request(f"/events/{channel}")))
            assert await conns[-1].until(at_least(len(head))) == head
        publisher = await RawHTTP.open(port, post("a", b'{"n":1}') + post("a", b'{"n":2}'))
        conns.append(publisher)
        frames = chunk(b'id: 1\ndata: {"n":1}\n\n') + chunk(b'id: 2\ndata: {"n":2}\n\n')
        for conn in conns[:2]:
            assert await conn.until(at_least(len(head + frames))) == head + frames
        answers = await publisher.count(b"HTTP/1.1 201", 2)
        assert b'{"id": 1, "subscribers": 2}' in answers
        assert answers.index(b'"id": 1') < answers.index(b'"id": 2')
        assert conns[2].data == head  # the other channel got nothing

        # a subscriber the server closes is no longer counted nor written to
        next(iter(bare.channels["a"])).transport.loseConnection()
        await conns[0].until(lambda _: conns[0].ended)
        publisher.protocol.transport.write(post("a", b"3"))
        answers = await publisher.contains(b'"id": 3')
        assert b'{"id": 3, "subscribers": 1}' in answers
        want = head + frames + chunk(b"id: 3\ndata: 3\n\n")
        assert await conns[1].until(at_least(len(want))) == want
    finally:
        for conn in conns:
            conn.abort()
        await listener.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_websocket_handshake_is_autobahns_own() -> None:
    """The connect row's floor for WebSocket: Autobahn answers the handshake."""
    listener = reactor.listenTCP(0, Bare(), interface="127.0.0.1")
    port = listener.getHost().port
    handshake = (
        b"GET /ws/a HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    conn = await RawHTTP.open(port, handshake)
    try:
        answer = await conn.contains(b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in answer
    finally:
        conn.abort()
        await listener.stopListening()
