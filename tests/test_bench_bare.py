"""The benchmark's floor server (``bench/bare/server.py``) does what the report says.

It is the reference the report compares pushd with, so its bytes on the
wire are checked like pushd's: the SSE head, one frame per publish to each
subscriber of that channel only, in order, and pipelined publishes answered
in order.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol

from bench.bare.server import HEAD, Bare, chunk


class Peer(Protocol):
    """Collects bytes; ``until(test)`` fires once what arrived passes ``test``."""

    def __init__(self) -> None:
        self.data = b""
        self.waiting: list[tuple[Callable[[bytes], bool], Deferred[bytes]]] = []
        self.made: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.made.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self._check()

    def connectionLost(self, reason: object = None) -> None:
        self.lost.callback(None)

    def until(self, test: Callable[[bytes], bool]) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.waiting.append((test, d))
        self._check()
        return d

    def _check(self) -> None:
        for item in list(self.waiting):
            if item[0](self.data):
                self.waiting.remove(item)
                item[1].callback(self.data)


async def connect(port: int) -> Peer:
    peer = Peer()

    class F(ClientFactory):
        def buildProtocol(self, addr: Any) -> Peer:
            return peer

    reactor.connectTCP("127.0.0.1", port, F())
    await peer.made
    return peer


def post(channel: str, body: bytes) -> bytes:
    return b"POST /pub/%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
        channel.encode(), len(body), body)


@pytest_twisted.ensureDeferred
async def test_publishes_reach_every_subscriber_of_the_channel_in_order() -> None:
    bare = Bare()
    listener = reactor.listenTCP(0, bare, interface="127.0.0.1")
    port = listener.getHost().port
    peers: list[Peer] = []
    try:
        head = HEAD + chunk(b"retry: 3000\n\n")
        for channel in ("a", "a", "b"):
            peer = await connect(port)
            peers.append(peer)
            peer.transport.write(b"GET /events/%s HTTP/1.1\r\nHost: x\r\n\r\n" % channel.encode())
            assert await peer.until(lambda d: len(d) >= len(head)) == head
        publisher = await connect(port)
        peers.append(publisher)
        publisher.transport.write(post("a", b'{"n":1}') + post("a", b'{"n":2}'))
        frames = chunk(b'id: 1\ndata: {"n":1}\n\n') + chunk(b'id: 2\ndata: {"n":2}\n\n')
        for peer in peers[:2]:
            got = await peer.until(lambda d: len(d) >= len(head + frames))
            assert got == head + frames
        answers = await publisher.until(lambda d: d.count(b"HTTP/1.1 201") == 2)
        assert b'{"id": 1, "subscribers": 2}' in answers
        assert answers.index(b'"id": 1') < answers.index(b'"id": 2')
        assert peers[2].data == head  # the other channel got nothing

        # a subscriber the server closes is no longer counted nor written to
        next(iter(bare.channels["a"])).transport.loseConnection()
        await peers[0].lost
        publisher.transport.write(post("a", b"3"))
        answers = await publisher.until(lambda d: b'"id": 3' in d)
        assert b'{"id": 3, "subscribers": 1}' in answers
        want = head + frames + chunk(b"id: 3\ndata: 3\n\n")
        assert await peers[1].until(lambda d: len(d) >= len(want)) == want
    finally:
        for peer in peers:
            if peer.transport.connected:
                peer.transport.abortConnection()
        await listener.stopListening()
