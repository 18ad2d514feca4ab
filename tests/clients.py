"""Clients for reading streaming responses in tests, driven by Deferreds.

``Collector`` gathers a treq response's body as it arrives; ``RawHTTP`` is a
TCP client that sends raw request bytes and keeps every byte it receives, for
tests of the exact bytes on the wire. Both let a test wait for a condition
with :meth:`until`, which fires when data arrives that satisfies it (or
fails after a timeout), so no test sleeps.
"""

from __future__ import annotations

from typing import Any, Callable

import treq
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

TIMEOUT = 10.0


class _Waiting:
    def __init__(self) -> None:
        self.data = b""
        self.ended = False
        self._waiters: list[tuple[Callable[[bytes], bool], Deferred[bytes]]] = []

    def feed(self, chunk: bytes) -> None:
        self.data += chunk
        self._check()

    def end(self, *_: Any) -> None:
        self.ended = True
        self._check()

    def _check(self) -> None:
        for pair in list(self._waiters):
            predicate, d = pair
            if predicate(self.data) or self.ended:
                self._waiters.remove(pair)
                if predicate(self.data):
                    d.callback(self.data)
                else:
                    d.errback(AssertionError(f"ended before condition; got {self.data!r}"))

    def until(
        self, predicate: Callable[[bytes], bool], timeout: float = TIMEOUT
    ) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self._waiters.append((predicate, d))
        self._check()
        return d.addTimeout(timeout, reactor)

    def contains(self, needle: bytes, timeout: float = TIMEOUT) -> Deferred[bytes]:
        return self.until(lambda data: needle in data, timeout)

    def count(self, needle: bytes, n: int, timeout: float = TIMEOUT) -> Deferred[bytes]:
        return self.until(lambda data: data.count(needle) >= n, timeout)


class Collector(_Waiting):
    """The body of a streaming treq response, as it arrives."""

    def __init__(self, response: Any) -> None:
        super().__init__()
        self.response = response
        self.done: Deferred[None] = treq.collect(response, self.feed)
        self.done.addTimeout(3 * TIMEOUT, reactor)
        self.done.addBoth(self.end)

    @classmethod
    async def get(cls, url: str, method: str = "GET", **kw: Any) -> Collector:
        response = await treq.request(method, url, unbuffered=True, **kw).addTimeout(
            TIMEOUT, reactor
        )
        return cls(response)


class _RawProtocol(Protocol):
    def __init__(self, sink: RawHTTP) -> None:
        self.sink = sink

    def dataReceived(self, data: bytes) -> None:
        self.sink.feed(data)

    def connectionLost(self, reason: Any) -> None:
        self.sink.end()


class RawHTTP(_Waiting):
    """Raw bytes in, raw bytes out, over a real TCP connection."""

    protocol: _RawProtocol

    @classmethod
    async def open(cls, port: int, request: bytes, tls: bool = False) -> RawHTTP:
        """Connect to 127.0.0.1:``port`` (over TLS, not verifying the server's
        certificate, when ``tls``) and send ``request``."""
        self = cls()
        endpoint: Any = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
        if tls:
            endpoint = SSL4ClientEndpoint(
                reactor, "127.0.0.1", port, ssl.CertificateOptions(), timeout=5
            )
        self.protocol = await connectProtocol(endpoint, _RawProtocol(self))
        self.protocol.transport.write(request)
        return self

    def close(self) -> None:
        self.protocol.transport.loseConnection()

    def abort(self) -> None:
        self.protocol.transport.abortConnection()


def get_request(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
    return "\r\n".join(lines).encode()


def split_response(raw: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """Status line, lower-cased headers and the (still chunked) body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def dechunk(body: bytes) -> tuple[list[bytes], bool]:
    """The chunks of a chunked body, and whether the final 0-chunk arrived."""
    chunks = []
    while body:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line, 16)
        if size == 0:
            return chunks, True
        if len(rest) < size + 2:
            break
        chunks.append(rest[:size])
        body = rest[size + 2 :]
    return chunks, False


def subscribed(
    broker: Any, channel: str, n: int = 1, timeout: float = TIMEOUT, inside: bool = False
) -> Deferred[None]:
    """Fires once ``channel`` has ``n`` subscribers on ``broker``.

    It wraps the broker's ``subscribe`` for the wait, so it fires on the event
    itself: once the subscription that makes ``n`` is live and the turn that
    made it is over (a stream opens its reader, sending its head, only once
    its subscription is live: pushd.web.access.answer_when_live). With
    ``inside``, at once inside the broker's ``subscribe`` call: before any
    replay, and before a stream's reader opens.
    """
    d: Deferred[None] = Deferred()
    if broker.subscribers(channel) >= n:
        d.callback(None)
        return d
    original = broker.subscribe

    def watching(ch: str, subscriber: Any, since: str | None = None) -> Any:
        sub = original(ch, subscriber, since)
        if not d.called and broker.subscribers(channel) >= n:
            if broker.subscribe is watching:
                del broker.subscribe
            if inside:
                d.callback(None)
            else:
                sub.when_live().addCallback(
                    lambda _: reactor.callLater(0, lambda: d.called or d.callback(None))
                )
        return sub

    broker.subscribe = watching
    return d.addTimeout(timeout, reactor)
