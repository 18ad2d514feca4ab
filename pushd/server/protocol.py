"""A lean HTTP/1.1 server protocol on httptools (llhttp), for the daemon's listeners.

The shape is uvicorn's ``httptools_impl``: parser callbacks fill one
request's fields, complete requests wait in a bounded queue and are answered
one at a time in order (pipelining), and reading pauses while the queue is
full or the socket cannot take more. What it adds for a public-facing daemon:

- every bound answered before the bytes it protects are held: 414 (URL), 431
  (header bytes or count), 413 (body; before reading it when
  ``Content-Length`` says so, and as soon as a chunked body passes it);
- request smuggling refused: ``Content-Length`` with ``Transfer-Encoding``,
  a duplicated or malformed ``Content-Length``, a ``Transfer-Encoding`` that is
  not ``chunked`` (400);
- deadlines on the reactor passed in, never reset by bytes trickling in: one
  from accept (or a request's first byte) to its end of headers, one for the
  whole body, and an idle one between keep-alive requests;
- connection counting and limits: a connection accepted past a limit
  answers one request (``503``, or the operational URLs) and is closed once
  that answer is written, whatever it keeps sending; one accepted over the
  rate of new connections from its address (``connect_rate``) the same, with
  ``429``.

Errors are JSON ``{"error": code, "message": text}`` and close the
connection. What answers a request is the factory's ``handle`` (a
twisted.web bridge, :mod:`pushd.server.bridge`), after an optional ``hook``
that may answer hot routes directly. A protocol that takes the connection
over (a stream, Autobahn's WebSocket) becomes this wrapper's
``wrappedProtocol``, so the end of the connection is still counted.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any, Callable
from typing import Protocol as TypingProtocol

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
)
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger, LogLevel
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from pushd import compat
from pushd.config import Http
from pushd.errors import PushdError
from pushd.logs import level_from_env

# Answered even past a limit or while draining: cheap, never held open.
ALWAYS_SERVED = frozenset({b"/healthz", b"/readyz", b"/metrics"})
# Bytes fed to the parser at once: between slices the queue bound and the
# header-bytes bound are checked, so neither can be overrun by more than one.
SLICE = 4096
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}

_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}
# Headers in which a proxy names the real client (see pushd.web.clients)
PROXY_HEADERS = frozenset({b"forwarded", b"x-forwarded-for", b"x-real-ip"})


def _version(number: str) -> bytes:
    """``HTTP/1.1`` for ``1.1``: made once for the two that come every time."""
    return _VERSIONS.get(number) or b"HTTP/" + number.encode("ascii")


log = Logger()


class HttpError(PushdError):
    """A request the server answers itself and then closes the connection on."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        super().__init__(status, code, message)
        self.retry_after = retry_after


class HttpRequest:
    """One parsed request: what a handler needs, nothing more."""

    __slots__ = (
        "body", "headers", "index", "keep_alive", "method", "path", "proxied", "upgrade", "url",
        "version",
    )

    def __init__(
        self,
        method: bytes,
        url: bytes,
        path: bytes,
        version: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        keep_alive: bool,
        upgrade: bool,
        index: dict[bytes, bytes] | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self.path = path
        self.version = version
        self.headers = headers  # as sent: names in their case, in order
        # lower-cased name -> its last value: what a handler looks up
        self.index = {n.lower(): v for n, v in headers} if index is None else index
        # whether a proxy header came: such a request is never taken as local
        self.proxied = not PROXY_HEADERS.isdisjoint(self.index)
        self.body = body
        self.keep_alive = keep_alive
        self.upgrade = upgrade


class Exchange(TypingProtocol):
    """What a handler returns for a request it has not finished answering."""

    def connectionLost(self, reason: Failure) -> None: ...


Handler = Callable[["HttpConnection", HttpRequest], "Exchange | None"]


class Connections:
    """Open connections in total and per address, and the limits on them.

    Plays the ``WrappingFactory`` part for :class:`HttpConnection`
    (``registerProtocol`` / ``unregisterProtocol``).
    """

    def __init__(self, max_total: int = 0, max_per_address: int = 0) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.open: set[HttpConnection] = set()
        self.per_address: Counter[str] = Counter()
        self.refused = 0
        self._empty: list[Deferred[None]] = []
        # Per-connection lines only when asked for: twistd's default log
        # observer shows every level, and formatting two lines per connection
        # is most of what accepting one costs.
        self.log_each = level_from_env() <= LogLevel.debug

    @property
    def total(self) -> int:
        return len(self.open)

    def over_limit(self, host: str) -> bool:
        """Would one more connection from ``host`` pass a limit?"""
        if self.max_total and self.total >= self.max_total:
            return True
        return bool(self.max_per_address and self.per_address[host] >= self.max_per_address)

    def over_total(self) -> bool:
        """Would one more connection pass the total limit?"""
        return bool(self.max_total and self.total >= self.max_total)

    def release(self, host: str) -> None:
        """One connection (or proxied request) of ``host`` is gone."""
        per_address = self.per_address
        per_address[host] -= 1
        if per_address[host] <= 0:
            del per_address[host]

    def registerProtocol(self, conn: HttpConnection) -> None:
        self.open.add(conn)
        if not conn.via_proxy:  # a proxy's requests count for their clients
            self.per_address[conn.peer_host] += 1
        if self.log_each:
            log.debug("connection opened from {peer}", peer=conn.peer_host)

    def unregisterProtocol(self, conn: HttpConnection) -> None:
        if conn not in self.open:
            return
        self.open.discard(conn)
        if not conn.via_proxy:
            self.release(conn.peer_host)
        clients, conn.clients = conn.clients, None
        for client in clients or ():
            self.release(client)
        if self.log_each:
            log.debug("connection closed from {peer}", peer=conn.peer_host)
        if not self.open:
            waiting, self._empty = self._empty, []
            for d in waiting:
                d.callback(None)

    def empty(self) -> Deferred[None]:
        """Fires once no connection is open (at once if none is)."""
        d: Deferred[None] = Deferred()
        if self.open:
            self._empty.append(d)
        else:
            d.callback(None)
        return d

    def close_idle(self) -> None:
        """Close every connection that is not in the middle of a request.

        For a drain: keep-alive connections waiting for their next request
        would otherwise hold it until their idle timeout.
        """
        for conn in tuple(self.open):
            if conn.idle():
                conn.loseConnection()

    def abort_all(self) -> None:
        """Drop every connection now (a drain ran out of time)."""
        for conn in tuple(self.open):
            conn.transport.abortConnection()


class HttpServer(Factory):
    """Builds one :class:`HttpConnection` per accepted connection.

    ``handle(conn, request)`` answers a request (see :mod:`pushd.server.bridge`);
    ``hook(conn, request)``, when set, is asked first (a later direct route
    table): it returns False to pass the request on, True once it answered
    (:meth:`HttpConnection.respond`), or an :class:`Exchange` when it will
    answer later (its ``connectionLost`` is called if the client goes first).
    ``body_limit(method, path)`` is the largest body accepted for a request.
    """

    protocol = None  # type: ignore[assignment]

    def __init__(
        self,
        handle: Handler,
        clock: IReactorTime,
        settings: Http | None = None,
        body_limit: Callable[[bytes, bytes], int] = lambda method, path: 64 * 1024,
        max_connections: int = 0,
        max_connections_per_address: int = 0,
        retry_after: int = 5,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self.handle = handle
        self.hook: Callable[[HttpConnection, HttpRequest], bool | Exchange] | None = None
        self.clock = clock
        self.settings = settings or Http()
        self.body_limit = body_limit
        self.connections = Connections(max_connections, max_connections_per_address)
        self.responses: Counter[int] = Counter()
        self.retry_after = retry_after
        self.draining = draining
        # [limits] connect_rate: new connections a second per client address
        # (pushd.rates.Buckets on the clock); None: no limit
        self.connect_rates: Any = None
        # trusted_proxies (pushd.web.clients.Clients): the connections of a
        # trusted proxy are counted for the clients it names; None: by peer
        self.clients: Any = None

    def logPrefix(self) -> str:
        # The start-up line "PushdSite starting on <port>" is what scripts
        # and tests parse to learn a tcp:0 listener's port.
        return "PushdSite"

    def buildProtocol(self, addr: IAddress) -> HttpConnection:
        host = str(getattr(addr, "host", ""))
        rates = self.connect_rates
        clients = self.clients
        if (
            clients is not None
            and (rates is not None or self.connections.max_per_address)
            and clients.trusts(host)
        ):
            # The per-address limits count the clients this proxy's requests
            # name, one request at a time (see HttpConnection._admit).
            conn = HttpConnection(self, host, self.connections.over_total())
            conn.via_proxy = True
            return conn
        if rates is not None:
            wait = rates.take(host)
            if wait:  # answered like a connection past a limit, with 429
                conn = HttpConnection(self, host, True)
                conn.rate_wait = wait
                return conn
        return HttpConnection(self, host, self.connections.over_limit(host))

    # Connections plays the WrappingFactory part for the wrapper.
    def registerProtocol(self, conn: HttpConnection) -> None:
        self.connections.registerProtocol(conn)

    def unregisterProtocol(self, conn: HttpConnection) -> None:
        self.connections.unregisterProtocol(conn)


class _Flow:
    """The connection's push producer on its transport: the socket's write
    buffer is full (pause) or drained (resume)."""

    __slots__ = ("conn",)

    def __init__(self, conn: HttpConnection) -> None:
        self.conn = conn

    def pauseProducing(self) -> None:
        self.conn._write_blocked(True)

    def resumeProducing(self) -> None:
        self.conn._write_blocked(False)

    def stopProducing(self) -> None:
        pass


class Handoff(ProtocolWrapper):
    """What a protocol taking a connection over through twisted.web's
    conventions (Autobahn's ``WebSocketResource``) is shown: a
    ``ProtocolWrapper``, whose ``wrappedProtocol`` it sets, so the
    :class:`HttpConnection` still hears the connection's end.

    :class:`HttpConnection` is not a ``ProtocolWrapper`` itself: that class's
    ``__getattr__`` makes every attribute read on its instances take
    CPython's slow path (measured 2.5x per read), and a request reads dozens.
    A Handoff is the TLS connection's ``wire`` (what taker-overs write on,
    relaying to the TLS transport), and, for a plain TCP connection, stands
    in as the transport's protocol while an upgrade request is answered.
    """

    def __init__(self, conn: HttpConnection, transport: Any) -> None:
        # not ProtocolWrapper.__init__: wrappedProtocol is the connection's
        self.conn = conn
        self.transport = transport
        self.factory = conn.server  # type: ignore[assignment]

    @property  # type: ignore[override]
    def wrappedProtocol(self) -> Any:
        return self.conn.wrappedProtocol

    @wrappedProtocol.setter
    def wrappedProtocol(self, protocol: Any) -> None:
        self.conn.wrappedProtocol = protocol

    def dataReceived(self, data: bytes) -> None:
        self.conn.dataReceived(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.conn.connectionLost(reason)

    def logPrefix(self) -> str:
        return "HttpConnection"


class HttpConnection(Protocol):
    """One HTTP/1.1 connection: parse, bound, queue, answer in order.

    A protocol that takes the connection over becomes its
    ``wrappedProtocol`` (streams call :meth:`take_over`; Autobahn sets it
    on a :class:`Handoff`), and from then on bytes and the connection's end
    go to it.
    """

    wrappedProtocol: Any = None
    disconnecting = 0
    channel: Any = None  # the twisted.web bridge's per-connection channel
    _timer: IDelayedCall | None = None
    _exchange: Exchange | None = None
    _current: HttpRequest | None = None
    _held: bytes | None = None  # read but not parsed: the queue is full
    _upgrade_rest: bytes | None = None  # bytes after an upgrade request's head
    _closing = False  # answered an error or chose to close: parse nothing more
    _running = False
    _read_paused = False
    _write_paused = False
    _continue_pending = False
    _keep = True  # the current response leaves the connection open
    _sock: Any = None  # plain TCP: the socket compat.send may send on
    rate_wait = 0  # over [limits] connect_rate: seconds to wait (its 429's Retry-After)
    # From a trusted proxy while per-address limits are set: each request is
    # counted for the client it names, from its head until its answer ends
    # (a stream or WebSocket: until the connection ends).
    via_proxy = False
    clients: deque[str] | None = None  # those clients, oldest request first

    def __init__(self, server: HttpServer, peer_host: str, over_limit: bool) -> None:
        self.factory = server  # type: ignore[assignment]
        self.server = server
        self.peer_host = peer_host
        self.over_limit = over_limit
        self.settings = settings = server.settings
        self._head_limit = settings.max_url + settings.max_header_bytes + SLICE
        self.clock = server.clock
        self.parser: HttpRequestParser | None = HttpRequestParser(self)
        self.queue: deque[HttpRequest | HttpError] = deque()
        self._reset_message()
        self._in_message = False
        self._flow = _Flow(self)
        self.wire: Any = None  # what a request's channel and a taker-over write on

    # -- the connection ----------------------------------------------------
    def makeConnection(self, transport: Any) -> None:
        if isinstance(transport, ProtocolWrapper):
            # TLS: taker-overs write on a Handoff, so one that replaces the
            # wrapped protocol (Autobahn) replaces ours and we hear the end.
            self.wire = Handoff(self, transport)
            directlyProvides(self.wire, providedBy(transport))
        else:
            self.wire = transport  # plain TCP: outlets write on the socket itself
        self.transport = transport
        self._sock = compat.socket_of(transport)
        self.connected = 1
        self.server.registerProtocol(self)
        self.connectionMade()

    def connectionMade(self) -> None:
        # Answers and stream frames leave whole, in one send each: Nagle's
        # wait for an ACK (up to the client's 40 ms delayed ACK) would only
        # hold back the next small one.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        self.transport.registerProducer(self._flow, True)
        self._start_timer(self.settings.header_timeout, self._header_timeout, "header")

    def dataReceived(self, data: bytes) -> None:
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
        elif self._upgrade_rest is not None:
            self._upgrade_rest += data  # the upgraded protocol's, once it is there
        elif self._closing:
            return  # an error was answered; what else comes is dropped
        elif self._held is not None:
            self._held += data
            self._pause_reading()
        else:
            self._feed(data)
            self._run()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.connected = 0
        self._stop_timer()
        self._closing = True
        self.parser = None
        self.queue.clear()
        wrapped, self.wrappedProtocol = self.wrappedProtocol, None
        exchange, self._exchange = self._exchange, None
        self._current = None
        try:
            if wrapped is not None:
                wrapped.connectionLost(reason)
            elif exchange is not None:
                exchange.connectionLost(reason)  # Klein cancels a held long-poll
        finally:
            # last: whoever waits for the connections to be gone (a drain)
            # sees everything on this one ended
            self.server.unregisterProtocol(self)

    def idle(self) -> bool:
        """Between requests: nothing being answered, queued or half-received."""
        return (
            self.wrappedProtocol is None
            and self._current is None
            and not self.queue
            and not self._in_message
        )

    # -- parsing -----------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        """Parse ``data`` a slice at a time; keep what the queue cannot take.

        Deadlines are armed after each slice rather than from the parser's
        callbacks: a request that arrives whole (most do) then starts and
        ends within one slice and arms none.
        """
        view: Any = memoryview(data) if len(data) > SLICE else None
        pos, end = 0, len(data)
        parser = self.parser
        limit = self.settings.max_pipelined
        while pos < end and not self._closing and parser is not None:
            if len(self.queue) >= limit:
                self._held = bytes(data[pos:])
                self._pause_reading()
                return
            piece = data if view is None else view[pos : pos + SLICE]
            pos += len(piece)
            if self._in_head:
                self._head_fed += len(piece)
                if self._head_fed > self._head_limit:  # one header still being gathered
                    self._refuse(HttpError(431, "headers_too_large", "the headers are too large"))
                    return
            try:
                parser.feed_data(piece)
            except HttpParserUpgrade as e:
                self._upgrade_rest = bytes(piece[e.args[0] :]) + bytes(data[pos:])
                self._closing = True  # nothing more is HTTP on this connection
                return
            except HttpParserCallbackError as e:
                error = e.__context__
                if not isinstance(error, HttpError):
                    log.failure("HTTP parser callback failed", Failure(error))
                    error = HttpError(400, "bad_request", "the request could not be read")
                self._refuse(error)
                return
            except HttpParserError as e:
                self._refuse(HttpError(400, "bad_request", f"malformed request: {e}"))
                return
            if self._in_message:  # part of a request is still to come
                if self._in_head:
                    if self._timer_kind != "header":  # from its first byte, never reset
                        self._start_timer(
                            self.settings.header_timeout, self._header_timeout, "header"
                        )
                elif self._timer_kind != "body":
                    self._start_timer(self.settings.body_timeout, self._body_timeout, "body")

    def _reset_message(self) -> None:
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._index: dict[bytes, bytes] = {}
        self._header_bytes = 0
        self._content_length: int | None = None
        self._chunked = False
        self._expect = False
        self._body: list[bytes] = []
        self._body_len = 0
        self._body_limit = 0
        self._in_head = True
        self._head_fed = 0
        self._method = b""

    # No on_message_begin: every request starts with its URL, and one parser
    # callback fewer per request is measurable.
    def on_url(self, url: bytes) -> None:
        if not self._in_message:
            self._in_message = True
            if self._timer_kind == "idle":  # the header deadline is armed after the slice
                self._timer_kind = ""
        self._url += url
        if len(self._url) > self.settings.max_url:
            limit = self.settings.max_url
            raise HttpError(414, "url_too_long", f"the URL is longer than {limit} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self._headers
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > self.settings.max_header_bytes:
            raise HttpError(431, "headers_too_large", "the headers are too large")
        if len(headers) >= self.settings.max_headers:
            raise HttpError(431, "too_many_headers", "the request has too many headers")
        headers.append((name, value))
        lower = name.lower()
        self._index[lower] = value
        if len(name) in (6, 14, 17):  # Expect, Content-Length, Transfer-Encoding
            if lower == b"content-length":
                if self._content_length is not None:
                    raise HttpError(400, "bad_request", "more than one Content-Length")
                value = value.strip(b" \t")
                if not value.isdigit():
                    raise HttpError(400, "bad_request", "Content-Length is not a number")
                self._content_length = int(value)
            elif lower == b"transfer-encoding":
                if self._chunked or value.strip(b" \t").lower() != b"chunked":
                    raise HttpError(400, "bad_request", "Transfer-Encoding must be chunked")
                self._chunked = True
            elif lower == b"expect":
                self._expect = value.strip(b" \t").lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_timer()
        if self._chunked and self._content_length is not None:
            raise HttpError(400, "bad_request", "Content-Length and Transfer-Encoding together")
        parser = self.parser
        assert parser is not None
        self._method = method = parser.get_method()
        path = self._url.split(b"?", 1)[0]
        if path not in ALWAYS_SERVED:
            if self.over_limit:
                self.server.connections.refused += 1
                raise self._refusal(method, path)
            if self.server.draining():
                raise HttpError(503, "draining", "this server is shutting down",
                                self.server.retry_after)
            if self.via_proxy:
                self._admit(method, path)
        self._body_limit = limit = self.server.body_limit(method, path)
        length = self._content_length
        if length is not None and length > limit:
            raise HttpError(413, "too_large", f"the body is larger than {limit} bytes")
        if length or self._chunked:
            if self._expect and parser.get_http_version() == "1.1":
                if self._current is None and not self.queue:
                    self.transport.write(CONTINUE)
                else:  # after the answers before it
                    self._continue_pending = True

    def _admit(self, method: bytes, path: bytes) -> None:
        """Count a trusted proxy's request for the client it names.

        pushd cannot see the connections a proxy's clients opened to it (nginx
        carries many clients' requests on each kept-alive connection), so
        here a request is one of its client's connections: ``connect_rate``
        takes a token for it, and while it is being answered (held, or
        streaming) it counts toward ``max_connections_per_address``.
        """
        server = self.server
        client = server.clients.forwarded(self.peer_host, self._index.get(b"x-forwarded-for"))
        rates = server.connect_rates
        if rates is not None:
            wait = rates.take(client)
            if wait:
                server.connections.refused += 1
                raise self._refusal(method, path, wait, client)
        connections = server.connections
        limit = connections.max_per_address
        if limit and connections.per_address[client] >= limit:
            connections.refused += 1
            raise self._refusal(method, path, 0, client)
        connections.per_address[client] += 1
        if self.clients is None:
            self.clients = deque()
        self.clients.append(client)

    def _refusal(
        self, method: bytes, path: bytes, wait: int | None = None, who: str | None = None
    ) -> HttpError:
        """The answer of a connection (or a proxied request) past a limit: its
        rate (429) or the connection limits (503); logged once, naming which."""
        wait = self.rate_wait if wait is None else wait
        if wait:
            what = "connection rate"
            error = HttpError(
                429, "rate_limited",
                "too many new connections from this address ([limits] connect_rate); "
                f"retry in {wait} s",
                wait,
            )
        else:
            what = "connection limit"
            error = HttpError(
                503, "too_many_connections", "connection limit reached; retry later",
                self.server.retry_after,
            )
        log.warn(
            "refused {method} {path} from {peer}: {what} reached",
            method=method.decode("latin-1"),
            path=path.decode("latin-1", "replace")[:200],
            peer=self.peer_host if who is None else who,
            what=what,
        )
        return error

    def on_body(self, data: bytes) -> None:
        self._body_len += len(data)
        if self._body_len > self._body_limit:
            raise HttpError(413, "too_large", f"the body is larger than {self._body_limit} bytes")
        self._body.append(data)

    def on_message_complete(self) -> None:
        parser = self.parser
        assert parser is not None
        self._cancel_timer()
        self._continue_pending = False
        body = self._body
        url = self._url
        self.queue.append(
            HttpRequest(
                self._method,
                url,
                url.split(b"?", 1)[0],
                _version(parser.get_http_version()),
                self._headers,
                body[0] if len(body) == 1 else b"".join(body),
                parser.should_keep_alive(),
                parser.should_upgrade(),
                self._index,
            )
        )
        self._in_message = False
        self._reset_message()

    # -- answering, in order -------------------------------------------------
    def _run(self) -> None:
        """Answer what is queued, one request at a time; then read on."""
        if self._running:
            return
        self._running = True
        try:
            while self.connected and self.wrappedProtocol is None:
                if self._current is None and self.queue and not self._write_paused:
                    item = self.queue.popleft()
                    if isinstance(item, HttpError):
                        self._send_error(item)
                        return
                    self._dispatch(item)
                    continue
                if self._current is None and self._held is not None and not self._closing:
                    data, self._held = self._held, None
                    self._feed(data)
                    if self._held is None:
                        self._resume_reading()
                    continue
                break
            if self._current is None and self.wrappedProtocol is None and self.connected:
                if self._continue_pending:
                    self._continue_pending = False
                    self.transport.write(CONTINUE)
                if not self.queue and not self._in_message and not self._timer_kind:
                    if self.over_limit or self._closing:
                        return
                    self._start_timer(self.settings.idle_timeout, self._idle_timeout, "idle")
        finally:
            self._running = False

    def _dispatch(self, request: HttpRequest) -> None:
        self._current = request
        self._keep = request.keep_alive and not request.upgrade and not self.over_limit
        transport = self.transport
        if request.upgrade and self.wire is transport:
            # Autobahn takes a plain TCP connection over by setting the
            # wrappedProtocol of the transport's protocol, if a wrapper
            transport.protocol = Handoff(self, transport)
        hook = self.server.hook
        try:
            handled = False if hook is None else hook(self, request)
            if handled is False:
                exchange = self.server.handle(self, request)
            else:  # True: answered; an Exchange: answering later, told if the client goes
                exchange = None if handled is True else handled
        finally:
            if request.upgrade and self.wire is transport:
                transport.protocol = self
        if self.wrappedProtocol is not None and self.parser is not None:  # Autobahn took it
            # Autobahn resumed reading; its protocol replaces our producer
            # itself once the handshake is done (pushd.web.ws onOpen).
            self._taken_over()
        elif self._current is request:  # answered later
            self._exchange = exchange

    def start_response(self, code: int, has_length: bool, close: bool, version: bytes) -> bool:
        """The current response's head is being written: may the connection stay open?

        Counts the response by status. Returns False when the connection
        closes after this response; the caller then sends
        ``Connection: close``.
        """
        self.server.responses[code] += 1
        keep = self._keep and not close
        if keep and version == b"HTTP/1.0" and not has_length:
            keep = False  # the body ends with the connection
        if keep and self.server.draining():
            keep = False  # tell the client to reconnect elsewhere
        self._keep = keep
        return keep

    def respond(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        """Answer the current request at once with ``body`` (a ``hook``'s way
        to answer without a twisted.web Request); HEAD gets the head only."""
        request = self._current
        assert request is not None
        version = request.version
        keep = self.start_response(status, True, False, version)
        lines = [b"%s %d %s\r\n" % (version, status, reason)]
        lines.extend(b"%s: %s\r\n" % pair for pair in headers)
        lines.append(b"Content-Length: %d\r\n" % len(body))
        if not keep:
            lines.append(b"Connection: close\r\n")
        elif version == b"HTTP/1.0":
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(b"\r\n")
        if request.method != b"HEAD":
            lines.append(body)
        self.write(b"".join(lines))
        self.finish_response()

    def write(self, data: bytes) -> None:
        """Bytes of the current response: sent at once while nothing waits
        (:func:`pushd.compat.send`), else through the transport, in order."""
        compat.send(self.transport, self._sock, data)

    def finish_response(self) -> None:
        """The current response is complete: close, or answer the next."""
        self._current = None
        self._exchange = None
        if self.clients:  # a proxied request's client: one connection fewer
            self.server.connections.release(self.clients.popleft())
        if not self._keep:
            self._closing = True
            self._held = None
            self.queue.clear()
            self.loseConnection()
            return
        if not self._running:
            self._run()

    def take_over(self, protocol: Protocol) -> Any:
        """Make ``protocol`` this connection's protocol (a stream); its transport."""
        self.wrappedProtocol = protocol
        self.transport.unregisterProducer()  # the stream's outlet takes our place
        self._taken_over()
        protocol.makeConnection(self.wire)
        self.transport.resumeProducing()  # reading is how a client's leaving is noticed
        rest, self._upgrade_rest = self._upgrade_rest, None
        if rest:
            protocol.dataReceived(rest)
        return self.wire

    def _taken_over(self) -> None:
        """No more HTTP here: no timers, no parser, no producer of ours."""
        self._stop_timer()
        self.parser = None
        self._current = None
        self._exchange = None
        self.queue.clear()
        self._closing = True
        self._held = None
        self._read_paused = self._write_paused = False
        rest, self._upgrade_rest = self._upgrade_rest, None
        if rest and self.wrappedProtocol is not None and self.wrappedProtocol.transport:
            self.wrappedProtocol.dataReceived(rest)

    # -- errors -------------------------------------------------------------
    def _refuse(self, error: HttpError) -> None:
        """Stop reading this connection; answer ``error`` after what is before it."""
        self._closing = True
        self._held = None
        self._cancel_timer()
        self.queue.append(error)
        if self._current is None and not self._running:
            self._run()

    def _send_error(self, error: HttpError) -> None:
        body = error.body()
        head = [
            b"HTTP/1.1 %d %s\r\n" % (error.status, REASONS.get(error.status, b"Error")),
            b"Content-Type: application/json\r\nCache-Control: no-store\r\n",
            b"Content-Length: %d\r\nConnection: close\r\n" % len(body),
        ]
        if error.retry_after is not None:
            head.append(b"Retry-After: %d\r\n" % error.retry_after)
        head.append(b"\r\n")
        if self._method != b"HEAD":
            head.append(body)
        self.server.responses[error.status] += 1
        self.transport.write(b"".join(head))
        self._closing = True
        self.loseConnection()

    # -- timers -------------------------------------------------------------
    # One deadline per connection, of one kind at a time ("header", "body",
    # "idle"; "" when none runs). Arming it sets the deadline; the one pending
    # DelayedCall is only moved when the new deadline is sooner than it, and
    # when it fires early (the deadline moved later meanwhile) it re-arms for
    # what is left. A keep-alive request then costs no timer call at all in
    # the common case, instead of three callLater and three cancel.
    _timer_kind = ""
    _deadline = 0.0

    def _start_timer(self, seconds: float, fire: Callable[[], None], kind: str) -> None:
        self._timer_kind = kind
        self._on_deadline = fire
        deadline = self.clock.seconds() + seconds
        self._deadline = deadline
        timer = self._timer
        if timer is None:
            self._timer = self.clock.callLater(seconds, self._tick)
        elif timer.getTime() > deadline:
            timer.reset(seconds)

    def _cancel_timer(self) -> None:
        """No deadline runs now (the pending call, if any, will find none)."""
        self._timer_kind = ""

    def _stop_timer(self) -> None:
        """No deadline will run on this connection again."""
        self._timer_kind = ""
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _tick(self) -> None:
        self._timer = None
        if not self._timer_kind:
            return
        left = self._deadline - self.clock.seconds()
        if left > 0:
            self._timer = self.clock.callLater(left, self._tick)
            return
        self._timer_kind = ""
        self._on_deadline()

    def _header_timeout(self) -> None:
        self._timed_out("the request headers took too long")

    def _body_timeout(self) -> None:
        self._timed_out("the request body took too long")

    def _timed_out(self, message: str) -> None:
        if self._current is None and not self.queue and not self._closing:
            self._refuse(HttpError(408, "timeout", message))
        else:  # an answer is under way or queued: no room for one more
            self._closing = True
            self.loseConnection()

    def _idle_timeout(self) -> None:
        self._closing = True
        self.loseConnection()

    # -- flow control ----------------------------------------------------------
    def _pause_reading(self) -> None:
        if not self._read_paused:
            self._read_paused = True
            if not self._write_paused:
                self.transport.pauseProducing()

    def _resume_reading(self) -> None:
        if self._read_paused:
            self._read_paused = False
            if not self._write_paused and self.connected:
                self.transport.resumeProducing()

    def _write_blocked(self, blocked: bool) -> None:
        """The socket's write buffer filled (or drained): stop (or resume)
        reading, so a client that never reads cannot make us queue answers."""
        if self.wrappedProtocol is not None:
            return
        self._write_paused = blocked
        if blocked:
            self.transport.pauseProducing()
        elif not self._read_paused and self.connected:
            self.transport.resumeProducing()
            if self._current is None:
                self._run()

    def loseConnection(self) -> None:
        self.disconnecting = 1
        if self.transport is not None:
            self.transport.loseConnection()

    def logPrefix(self) -> str:
        return "HttpConnection"
