"""The HTTP site: bounded bodies, counted connections, limits and drain refusals.

Connections are counted at the TCP level, by a thin wrapper around each
connection's protocol, because that is the resource a limit protects (file
descriptors and buffers) and because it is the only place that sees every
connection end: a WebSocket upgrade hands the socket from the HTTP channel
to Autobahn, which swaps the protocol *inside* the wrapper (as it does for
TLS), so the wrapper still hears ``connectionLost``.

A connection past ``[limits] max_connections`` or
``max_connections_per_address`` is still accepted and read, but its request
is answered ``503`` with ``Retry-After`` and a JSON error, then closed; a
WebSocket handshake on it gets the same answer instead of an upgrade. The
operational URLs (``/healthz``, ``/readyz``, ``/metrics``) are always
served, so a daemon at its limit still looks healthy to its supervisor.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger, LogLevel
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from pushd.errors import PushdError
from pushd.logs import level_from_env

# Answered even past a limit or while draining: cheap, never held open.
ALWAYS_SERVED = frozenset({b"/healthz", b"/readyz", b"/metrics"})
# An over-limit connection that never sends a request is closed after this.
REFUSED_IDLE_TIMEOUT = 10

log = Logger()


class Connection(ProtocolWrapper):
    """One TCP connection to the site; counted from accept to close.

    It sits between the socket and the HTTP channel as the socket's
    *protocol* only: on plain TCP the channel (and the outlets, which send
    straight on the socket, see :mod:`pushd.compat`) still gets the real
    TCP transport, so the wrapper is not on the write path at all. Under TLS
    the transport below is itself a wrapper, and this one wraps the classic
    way, as Autobahn expects when it takes a TLS connection over.
    """

    over_limit = False
    peer_host = ""

    def makeConnection(self, transport: Any) -> None:
        if isinstance(transport, ProtocolWrapper):  # TLS: be the channel's transport
            super().makeConnection(transport)
            return
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self.wrappedProtocol.makeConnection(transport)


def connection_of(transport: Any) -> Connection | None:
    """The :class:`Connection` of an HTTP channel's transport, either way it is wired."""
    if isinstance(transport, Connection):
        return transport
    protocol = getattr(transport, "protocol", None)
    return protocol if isinstance(protocol, Connection) else None


class Connections:
    """Open connections in total and per address, and the limits on them.

    Plays the ``WrappingFactory`` part for :class:`Connection`
    (``registerProtocol`` / ``unregisterProtocol``).
    """

    def __init__(self, max_total: int = 0, max_per_address: int = 0) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.open: set[Connection] = set()
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

    def registerProtocol(self, conn: Connection) -> None:
        self.open.add(conn)
        self.per_address[conn.peer_host] += 1
        if self.log_each:
            log.debug("connection opened from {peer}", peer=conn.peer_host)

    def unregisterProtocol(self, conn: Connection) -> None:
        if conn not in self.open:
            return
        self.open.discard(conn)
        self.per_address[conn.peer_host] -= 1
        if self.per_address[conn.peer_host] <= 0:
            del self.per_address[conn.peer_host]
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
        would otherwise hold it until its timeout.
        """
        for conn in tuple(self.open):
            channel = getattr(conn.wrappedProtocol, "_channel", conn.wrappedProtocol)
            requests = getattr(channel, "requests", None)
            if requests is not None and not requests:  # an idle HTTP channel
                conn.loseConnection()

    def abort_all(self) -> None:
        """Drop every connection now (a drain ran out of time)."""
        for conn in tuple(self.open):
            conn.transport.abortConnection()


class PushdRequest(Request):
    """Stops storing a request body past the site's ``body_limit``.

    Twisted would otherwise keep any body a client sends; the route then
    answers 413 from the ``body_too_large`` flag, and memory stays bounded.
    It also counts each response by status, once, when its headers go out,
    and answers 503 instead of routing when its connection is over a limit
    or the daemon is draining.
    """

    body_too_large = False
    _body_seen = 0
    _counted = False

    def handleContentChunk(self, data: bytes) -> None:
        self._body_seen += len(data)
        limit = getattr(self.channel.site, "body_limit", None) if self.channel else None
        if limit is not None and self._body_seen > limit:
            self.body_too_large = True
            return
        super().handleContentChunk(data)

    def process(self) -> None:
        site = self.channel.site if self.channel else None
        if isinstance(site, PushdSite) and self.path not in ALWAYS_SERVED:
            conn = connection_of(self.channel.transport)
            if conn is not None and conn.over_limit:
                site.connections.refused += 1
                log.warn(
                    "refused {method} {path} from {peer}: connection limit reached",
                    method=self.method.decode("latin-1"),
                    path=self.path.decode("latin-1", "replace")[:200],
                    peer=conn.peer_host,
                )
                self.refuse(
                    PushdError(503, "too_many_connections", "connection limit reached; retry later")
                )
                return
            if site.draining():
                self.refuse(PushdError(503, "draining", "this server is shutting down"))
                return
        super().process()

    def refuse(self, error: PushdError) -> None:
        """Answer ``error`` with ``Retry-After``, then close the connection."""
        site = self.channel.site
        self.setResponseCode(error.status)
        self.setHeader(b"Content-Type", b"application/json")
        self.setHeader(b"Cache-Control", b"no-store")
        self.setHeader(b"Retry-After", str(getattr(site, "retry_after", 5)).encode())
        self.setHeader(b"Connection", b"close")
        self.channel.persistent = False
        body = error.body()
        self.setHeader(b"Content-Length", str(len(body)).encode())
        self.write(body)
        self.finish()

    def write(self, data: bytes) -> None:
        if not self._counted:
            self._counted = True
            site = self.channel.site if self.channel else None
            responses = getattr(site, "responses", None)
            if responses is not None:
                responses[self.code] += 1
                if site.draining() and self.channel is not None:
                    # Tell the client to reconnect elsewhere, not on this socket.
                    self.setHeader(b"Connection", b"close")
                    self.channel.persistent = False
        super().write(data)


class PushdSite(Site):
    requestFactory = PushdRequest
    displayTracebacks = False

    def __init__(
        self,
        resource: Resource,
        body_limit: int,
        max_connections: int = 0,
        max_connections_per_address: int = 0,
        retry_after: int = 5,
        draining: Callable[[], bool] = lambda: False,
        **kw: Any,
    ) -> None:
        kw.setdefault("timeout", 600)
        # No route reads form fields from a POST body, and deciding whether a
        # body is a form parses Content-Type with the email package: a fifth
        # of what a publish cost.
        kw.setdefault("parsePOSTFormSubmission", False)
        super().__init__(resource, **kw)
        self.body_limit = body_limit
        self.connections = Connections(max_connections, max_connections_per_address)
        self.responses: Counter[int] = Counter()
        self.retry_after = retry_after
        self.draining = draining

    def buildProtocol(self, addr: IAddress) -> IProtocol:
        channel = super().buildProtocol(addr)
        host = str(getattr(addr, "host", ""))
        conn = Connection(self.connections, channel)  # type: ignore[arg-type]
        conn.peer_host = host
        if self.connections.over_limit(host):
            conn.over_limit = True
            channel.timeOut = REFUSED_IDLE_TIMEOUT  # type: ignore[union-attr]
        return conn

    def log(self, request: Request) -> None:
        """Access logs are off: one line per poll would drown everything else."""
