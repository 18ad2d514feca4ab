"""Answer a parsed request with the twisted.web resource tree, unchanged.

Each request becomes a :class:`twisted.web.server.Request` whose *channel*
is the connection's :class:`Channel`, as an HTTP/2 stream (twisted's
``H2Stream``) serves its requests: the request writes its head and body
through it and tells it when it is done. So every route, Klein's included,
answers as it would under twisted.web's own ``HTTPChannel``: status and
headers, ``Content-Length`` or chunked, HEAD, a handler's Deferred cancelled
when the client goes away (the request hears ``connectionLost``), streams
taking the connection over, and Autobahn's WebSocket upgrade (it takes
``channel.transport``; see :class:`pushd.server.protocol.HttpConnection`).
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.internet.interfaces import ISSLTransport
from twisted.web.http import _PullToPush
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from pushd.server.protocol import HttpConnection, HttpRequest


class PushdRequest(Request):
    """A twisted.web request served over :class:`Channel`."""

    def render(self, resrc: Any) -> None:
        # No "Server: TwistedWeb/<version>": the hot routes (pushd.server.exchange)
        # send none either, and a version string only helps an attacker.
        self.responseHeaders.removeHeader(b"server")
        super().render(resrc)

    def connectionLost(self, reason: Any) -> None:
        # twisted.web's channel hears the end itself; ours is told by the connection
        if not self.finished:
            super().connectionLost(reason)


class Channel:
    """What a twisted.web ``Request`` needs of its channel, for one connection.

    One per connection, made on its first bridged request and reused.
    ``transport`` is what a protocol taking the connection over is given
    (Autobahn reads it from here): the socket on plain TCP, the connection
    itself under TLS.
    """

    factory = None  # no access log: one line per poll would drown everything else
    requestFactory = PushdRequest

    def __init__(self, conn: HttpConnection, site: Site) -> None:
        self.conn = conn
        self.site = site
        self.transport: Any = conn.wire
        self._peer = conn.transport.getPeer()
        self._host = conn.transport.getHost()
        self._secure = ISSLTransport.providedBy(conn.transport)
        self._producer: Any = None
        self._head: bytes | None = None

    def getPeer(self) -> Any:
        return self._peer

    def getHost(self) -> Any:
        return self._host

    def isSecure(self) -> bool:
        return bool(self._secure)

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Headers) -> None:
        close = False
        connection = headers.getRawHeaders(b"connection")
        if connection is not None:
            close = any(b"close" in value.lower() for value in connection)
        framed = headers.hasHeader(b"content-length") or headers.hasHeader(b"transfer-encoding")
        keep = self.conn.start_response(int(code), framed, close, version)
        lines = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                lines.extend((name, b": ", value, b"\r\n"))
        if not keep and not close:
            lines.append(b"Connection: close\r\n")
        elif keep and version == b"HTTP/1.0":
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(b"\r\n")
        # held until the first body bytes (or the end): one send for both
        self._head = b"".join(lines)

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            self._head = None
            data = head + data
        self.conn.write(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def flush_head(self) -> None:
        """Send a head still held (a response with no body, or before a take-over)."""
        head = self._head
        if head is not None:
            self._head = None
            self.conn.write(head)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """A response's own producer (e.g. a static file) stands in for the
        connection's, until it unregisters."""
        if not streaming:
            producer = _PullToPush(producer, self.conn.transport)
        self._producer = producer
        self.conn.transport.unregisterProducer()
        self.conn.transport.registerProducer(producer, True)
        if not streaming:
            producer.startStreaming()

    def unregisterProducer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        if isinstance(producer, _PullToPush):
            producer.stopStreaming()
        self.conn.transport.unregisterProducer()
        self.conn.transport.registerProducer(self.conn._flow, True)

    def requestDone(self, request: Request) -> None:
        self.flush_head()
        self.conn.finish_response()

    def loseConnection(self) -> None:
        self.flush_head()
        self.conn.loseConnection()

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.conn.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        self.conn.loseConnection()

    # twisted.web's HTTPChannel API that resources sometimes touch
    def setTimeout(self, period: Any) -> None:
        """The connection's deadlines are its own; nothing to change."""


class WebBridge:
    """The ``handle`` of an :class:`~pushd.server.protocol.HttpServer`: each
    request through ``resource`` as a twisted.web request."""

    def __init__(self, resource: Resource) -> None:
        self.site = Site(resource)
        self.site.displayTracebacks = False

    @property
    def resource(self) -> Resource:
        return self.site.resource  # type: ignore[no-any-return]

    def __call__(self, conn: HttpConnection, parsed: HttpRequest) -> PushdRequest | None:
        channel = conn.channel
        if channel is None:
            channel = conn.channel = Channel(conn, self.site)
        request = PushdRequest(channel, queued=False, parsePOSTFormSubmission=False)
        headers = request.requestHeaders
        for name, value in parsed.headers:
            headers.addRawHeader(name, value)
        request.content = BytesIO(parsed.body)
        request.parseCookies()
        request.requestReceived(parsed.method, parsed.url, parsed.version)
        return None if request.finished else request
