"""A request answered without twisted.web: what pushd's hot routes use of one.

The bridge (:mod:`pushd.server.bridge`) builds a twisted.web ``Request`` per
request: a ``Headers`` object each way, a ``Deferred`` for its end, cookies,
a session hook, a content file and a walk down the resource tree, about a
third of what a publish cost. The hot routes of pushd's route table (publish,
poll, long-poll, SSE, stream, WebSocket) need only a small part of that
interface, and an :class:`Exchange` is exactly that part, over the parsed
request and its connection: the query arguments, request headers, a body,
response status and headers, the answer in one send, the end of a response
written later (a long-poll's), and the connection handed over (a stream's,
Autobahn's).

What it answers is the same as through the bridge: status, headers (``Date``
included), ``Content-Length`` or chunked, HEAD with no body, and a client
that goes away is told to whoever waits (``notifyFinish``).
"""

from __future__ import annotations

from io import BytesIO
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, datetimeToString

if TYPE_CHECKING:
    from pushd.server.protocol import HttpConnection, HttpRequest

log = Logger()
_INTERNAL = (
    b'{"error":"internal","message":"the server failed to answer; it is logged"}'
)


class _Dates:
    """The ``Date`` header, formatted once a second rather than per answer."""

    second = -1
    value = b""

    @classmethod
    def now(cls, seconds: float) -> bytes:
        whole = int(seconds)
        if whole != cls.second:
            cls.second = whole
            cls.value = datetimeToString(whole)
        return cls.value


def _query(query: bytes) -> dict[bytes, list[bytes]]:
    """``parse_qs(query, keep_blank_values=True)`` as twisted.web's ``args``
    has it, without its cost (a tenth of a long-poll's) and without its
    failure on percent-escaped UTF-8 (``parse_qs`` of bytes goes through ASCII)."""
    args: dict[bytes, list[bytes]] = {}
    escaped = b"%" in query or b"+" in query
    for pair in query.split(b"&"):
        if not pair:
            continue
        name, _, value = pair.partition(b"=")
        if escaped:
            name = unquote_to_bytes(name.replace(b"+", b" "))
            value = unquote_to_bytes(value.replace(b"+", b" "))
        args.setdefault(name, []).append(value)
    return args


_KEYS: dict[bytes | str, bytes] = {}


def _key(name: bytes | str) -> bytes:
    """A header name as the parsed request's index has it (lower-case bytes);
    remembered, as handlers ask for the same few names again and again."""
    key = (name.encode("latin-1") if isinstance(name, str) else name).lower()
    if len(_KEYS) < 256:
        _KEYS[name] = key
    return key


class RequestHeaders:
    """The request's headers, read-only, as twisted.web's ``Headers`` reads them."""

    __slots__ = ("_pairs",)

    def __init__(self, pairs: list[tuple[bytes, bytes]]) -> None:
        self._pairs = pairs

    def getRawHeaders(self, name: bytes | str, default: Any = None) -> list[bytes] | Any:
        key = (name.encode("latin-1") if isinstance(name, str) else name).lower()
        values = [value for header, value in self._pairs if header.lower() == key]
        return values or default

    def hasHeader(self, name: bytes | str) -> bool:
        return self.getRawHeaders(name) is not None

    def getAllRawHeaders(self) -> Any:
        seen: dict[bytes, list[bytes]] = {}
        for name, value in self._pairs:
            seen.setdefault(name, []).append(value)
        return iter(seen.items())


class _Wire:
    """``request.channel`` as Autobahn's WebSocket upgrade reads it: the
    connection's transport to take over (the upgrade sets it to None)."""

    __slots__ = ("transport",)

    def __init__(self, transport: Any) -> None:
        self.transport = transport


class Exchange:
    """One request and its answer on an :class:`~pushd.server.protocol.HttpConnection`."""

    __slots__ = (
        "_args", "_content", "_finish_waiters", "_gone", "_headers", "_out", "_parsed", "_wire",
        "body", "chunked", "code", "conn", "finished", "method", "path", "prepath",
        "startedWriting", "uri",
    )

    def __init__(self, conn: HttpConnection, parsed: HttpRequest) -> None:
        self.conn = conn
        self._parsed = parsed
        self.method = parsed.method
        self.uri = parsed.url
        self.path = parsed.path
        self.prepath: list[bytes] = []  # served at the root of the server
        self.body = parsed.body  # what pushd.web.request.body reads, without a file
        self._content: BytesIO | None = None
        self.code = 200
        # lower-cased name -> (name as set, value), in the order first set
        self._out: dict[bytes, tuple[bytes, bytes]] = {}
        self._args: dict[bytes, list[bytes]] | None = None
        self._headers: RequestHeaders | None = None
        self._finish_waiters: list[Deferred[None]] | None = None
        self._gone: Callable[[Failure], object] | None = None
        self._wire: _Wire | None = None
        self.startedWriting = False
        self.finished = False
        self.chunked = False

    # -- the request ---------------------------------------------------------
    @property
    def args(self) -> dict[bytes, list[bytes]]:
        """The query's arguments, as twisted.web's ``Request.args`` has them."""
        if self._args is None:
            _, _, query = self.uri.partition(b"?")
            self._args = _query(query) if query else {}
        return self._args

    @property
    def content(self) -> BytesIO:
        """The body as twisted.web has it, a file (made on first use)."""
        if self._content is None:
            self._content = BytesIO(self.body)
        return self._content

    @property
    def requestHeaders(self) -> RequestHeaders:
        if self._headers is None:
            self._headers = RequestHeaders(self._parsed.headers)
        return self._headers

    def getHeader(self, name: bytes | str) -> bytes | None:
        """The last value of header ``name`` (any case), or None."""
        key = _KEYS.get(name)
        if key is None:
            key = _key(name)
        return self._parsed.index.get(key)

    @property
    def proxied(self) -> bool:
        """Whether the request carries a proxy's header (pushd.web.clients)."""
        return self._parsed.proxied

    @property
    def peer_host(self) -> str:
        """The client's address as text, as the connection recorded it."""
        return self.conn.peer_host

    def getClientAddress(self) -> Any:
        return self.conn.transport.getPeer()

    def getHost(self) -> Any:
        return self.conn.transport.getHost()

    def isSecure(self) -> bool:
        return bool(ISSLTransport.providedBy(self.conn.transport))

    @property
    def transport(self) -> Any:
        return self.conn.transport

    @property
    def channel(self) -> _Wire:
        """What Autobahn's ``WebSocketResource`` takes the connection from."""
        if self._wire is None:
            self._wire = _Wire(self.conn.wire)
        return self._wire

    # -- the answer ------------------------------------------------------------
    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        self.code = code

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if isinstance(name, str):
            name = name.encode("latin-1")
        if isinstance(value, str):
            value = value.encode("latin-1")
        self._out[name.lower()] = (name, value)

    def _head(self, length: int | None) -> bytes:
        """Status line and headers; tells the connection whether it stays open."""
        conn = self.conn
        version = self._parsed.version
        close = False
        lines = [b"%s %d %s\r\n" % (version, self.code, RESPONSES.get(self.code, b"Unknown"))]
        for name, value in self._out.values():
            lines.append(b"%s: %s\r\n" % (name, value))
        connection = self._out.get(b"connection")
        if connection is not None:
            close = b"close" in connection[1].lower()
        if length is None and version != b"HTTP/1.0" and self.code not in (204, 304):
            self.chunked = True
            lines.append(b"Transfer-Encoding: chunked\r\n")
        elif length is not None:
            lines.append(b"Content-Length: %d\r\n" % length)
        keep = conn.start_response(self.code, length is not None or self.chunked, close, version)
        if not keep and not close:
            lines.append(b"Connection: close\r\n")
        elif keep and version == b"HTTP/1.0":
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(b"Date: %s\r\n\r\n" % _Dates.now(conn.clock.seconds()))
        return b"".join(lines)

    def respond(self, body: bytes) -> None:
        """The whole answer at once, with its ``Content-Length``, in one send."""
        if self.finished:
            return
        self._out.pop(b"content-length", None)  # the body's own length goes out
        head = self._head(len(body))
        self.startedWriting = True
        self.conn.write(head if self.method == b"HEAD" else head + body)
        self._done()

    def write(self, data: bytes) -> None:
        """Body bytes; the head goes with the first (chunked unless sized)."""
        if self.finished:
            return
        out = b""
        if not self.startedWriting:
            self.startedWriting = True
            length = None
            sized = self._out.pop(b"content-length", None)
            if sized is not None:
                length = int(sized[1])
            out = self._head(length)
        if data and self.method != b"HEAD":
            out += b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data
        if out:
            self.conn.write(out)

    def finish(self) -> None:
        if self.finished:
            return
        if not self.startedWriting:
            self.write(b"")
        if self.chunked and self.method != b"HEAD":
            self.conn.write(b"0\r\n\r\n")
        self._done()

    def _done(self) -> None:
        self.finished = True
        waiters, self._finish_waiters = self._finish_waiters, None
        self.conn.finish_response()
        for d in waiters or ():
            d.callback(None)

    def notifyFinish(self) -> Deferred[None]:
        """Fires when the answer is complete; fails if the client left first."""
        d: Deferred[None] = Deferred()
        if self.finished:
            d.callback(None)
        else:
            if self._finish_waiters is None:
                self._finish_waiters = []
            self._finish_waiters.append(d)
        return d

    def when_gone(self, gone: Callable[[Failure], object]) -> None:
        """Call ``gone(reason)`` if the client leaves before the answer: what
        ``notifyFinish().addErrback(gone)`` does, without a Deferred (a held
        long-poll asks this once per request)."""
        self._gone = gone

    def connectionLost(self, reason: Failure) -> None:
        """The client went away before the answer (the connection tells us)."""
        if self.finished:
            return
        self.finished = True
        gone, self._gone = self._gone, None
        if gone is not None:
            gone(reason)
        waiters, self._finish_waiters = self._finish_waiters, None
        for d in waiters or ():
            d.errback(reason)

    def processingFailed(self, reason: Failure) -> None:
        log.failure("answering {method} {path} failed", reason,
                    method=self.method.decode("latin-1"), path=self.path.decode("latin-1"))
        if self.startedWriting:
            self.conn.loseConnection()
            return
        self.code = 500
        self._out = {
            b"content-type": (b"Content-Type", b"application/json"),
            b"cache-control": (b"Cache-Control", b"no-store"),
        }
        self.respond(_INTERNAL)

    def take_over(self, protocol: Any) -> Any:
        """Hand the connection to ``protocol`` once its head is written (a stream)."""
        if not self.startedWriting:
            self.write(b"")
        return self.conn.take_over(protocol)
