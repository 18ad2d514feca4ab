"""What SSE and the NDJSON stream share: one long response fed by a subscription.

A :class:`Streamer` is the broker's subscriber for one response. twisted.web
parses the request and writes the status line and headers (so every header
the site adds, CORS included, is there as for any other answer); then the
streamer **takes the connection over**, as a WebSocket upgrade does: it
becomes the TCP connection's protocol, and the HTTP channel and its
``Request`` are let go. What stays per open stream is the socket, this
object, its :class:`~pushd.outlet.Outlet` and its broker subscription:
no Request, headers or Deferred chains held for hours.

Each message's cached, pre-framed bytes (chunked when the client speaks
HTTP/1.1) go through the outlet (bounded queue, push producer). Replay
comes one message at a time; live messages come through the channel's
:class:`~pushd.fanout.Group` for this wire format, which the stream joins
once its replay is done (its subscription hands delivery over to the
group's broker watch), so a publish costs one append, not one call chain
per subscriber. A streamer
beats on its transport's shared heartbeat and ends in one of four ways: the
client leaves (``connectionLost``), the channel is deleted (``closed``),
the byte budget is spent, or the daemon drains. A clean end sends the last
chunk and closes the connection. Subclasses only say how messages and
notices look.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from pushd.fanout import Group
from pushd.heartbeat import Heartbeat
from pushd.model import Message
from pushd.outlet import Outlet
from pushd.server.bridge import Channel
from pushd.web.context import Context
from pushd.wire import chunk, encode

LAST_CHUNK = b"0\r\n\r\n"


class _TakenOver(Resource):
    """What a route returns once a streamer owns the connection.

    Klein renders a returned resource; this one says the response is not
    finished (``NOT_DONE_YET``), so neither Klein nor twisted.web writes
    anything more on a connection that is no longer theirs.
    """

    isLeaf = True

    def render(self, request: Request) -> int:
        return NOT_DONE_YET


TAKEN_OVER = _TakenOver()


def take_over(request: Request, protocol: Protocol) -> Any:
    """Make ``protocol`` the protocol of ``request``'s connection; its transport.

    On pushd's own server (:mod:`pushd.server`) the connection hands itself
    over: it stops parsing, drops its deadlines and its producer, and passes
    bytes and its end to ``protocol``. Under twisted.web's ``HTTPChannel``
    (a site mounted in another app, or treq's in-memory ``StubTreq``) the
    channel stops being the connection's protocol and producer and loses its
    transport, so nothing it still holds can write; with no reference left
    to it, it and the request are freed.
    """
    take = getattr(request, "take_over", None)
    if take is not None:  # pushd's own server, without twisted.web (Exchange)
        return take(protocol)
    channel = request.channel
    if isinstance(channel, Channel):
        channel.flush_head()
        return channel.conn.take_over(protocol)
    channel.setTimeout(None)  # the channel's idle timer would hold it alive
    transport, channel.transport = channel.transport, None
    transport.unregisterProducer()  # the channel was the connection's producer
    if isinstance(transport, ProtocolWrapper):
        transport.wrappedProtocol = protocol
    elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
        transport.protocol.wrappedProtocol = protocol
    else:
        transport.protocol = protocol
    protocol.makeConnection(transport)
    # the channel may have stopped reading while it handled the request;
    # reading is how a closed connection is noticed
    transport.resumeProducing()
    # Where the old channel still hears the connection end (a test's
    # in-memory pump talks to it directly), pass that on.
    request.notifyFinish().addErrback(lambda f: protocol.connectionLost(f))
    return transport


@cache
def framer(fmt: str) -> Callable[[Message], bytes]:
    """A message's cached bytes in ``fmt``: one function per format, shared."""

    def frame(message: Message) -> bytes:
        return message.encoded.get(fmt) or encode(message, fmt)

    return frame


class Streamer(Protocol):
    """One streaming response subscribed to one channel; after its headers,
    the protocol of its connection."""

    name = "stream"  # the transport, for counters
    content_type = b"application/octet-stream"
    groupable = True  # the same bytes as every other stream of its format (not gzip)
    log = Logger()
    _waiters: list[Deferred[None]] | None = None  # made only when someone waits
    expiry: Any = None  # when the token behind it expires (pushd.web.access)

    def __init__(
        self,
        ctx: Context,
        request: Request,
        channel: str,
        fmt: str,
        heartbeat: Heartbeat,
        max_bytes: int = 0,
    ) -> None:
        self.ctx = ctx
        self.channel = channel
        self.max_bytes = max_bytes
        self.counts = ctx.registry.deliveries  # per transport, bumped per delivery
        self.heartbeat_timer = heartbeat
        self.subscription: Any = None
        self.group: Group | None = None
        self.pos = 0  # in the group
        self.ended = False
        self.body_bytes = 0
        request.setHeader(b"Content-Type", self.content_type)
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")
        # The connection closes when the response ends (budget, drain,
        # deletion): say so, or an HTTP/1.1 client may send its next request
        # on it in the instant before the close reaches it.
        request.setHeader(b"Connection", b"close")
        self.prepare_headers(request)
        request.write(b"")  # status line and headers go out now, before any message
        self.framed = bool(request.chunked)
        self.fmt = fmt + "+chunk" if self.framed else fmt
        transport = take_over(request, self)
        self.outlet = Outlet(transport, ctx.settings.limits.queue, self._overflowed, ctx.flusher)
        transport.registerProducer(self.outlet, True)
        # the group writes our frames itself, and reports them to spent() (Group.sweep)
        self.direct: Outlet | None = self.outlet
        ctx.registry.opened(self.name, self)
        heartbeat.add(self)

    # -- the connection, once taken over -------------------------------------
    def dataReceived(self, data: bytes) -> None:
        """A streaming client has nothing more to say; what it sends is dropped."""

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """The client went away."""
        self._stop()

    # -- subclasses --------------------------------------------------------
    def prepare_headers(self, request: Request) -> None:
        """Set extra headers on ``request`` before they are sent."""

    def reset_bytes(self, channel: str, cursor: str | None) -> bytes:
        raise NotImplementedError

    def closed_bytes(self, channel: str) -> bytes:
        raise NotImplementedError

    def expired_bytes(self, channel: str) -> bytes:
        raise NotImplementedError

    def heartbeat_bytes(self) -> bytes:
        raise NotImplementedError

    def goodbye_bytes(self) -> bytes:
        """Written when the daemon drains, before the response ends."""
        return b""

    # -- writing -----------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Frame ``data`` (not pre-framed) as this response's body bytes."""
        if data:
            if self.group is not None:
                self.group.take(self)  # the messages before it go first
            self.outlet.write(chunk(data) if self.framed else data)

    def pulled(self, data: bytes, count: int) -> None:
        """``count`` live messages from the group, in one write."""
        self.counts[self.name] += count
        self.outlet.write_now(data)
        if self.max_bytes:
            self.spent(len(data))

    def deliver(self, message: Message) -> None:
        # Runs once per subscriber per message: the cached bytes, one write.
        data = message.encoded.get(self.fmt) or encode(message, self.fmt)
        self.outlet.write(data)
        if self.max_bytes:
            self.delivered(len(data))
        else:
            self.counts[self.name] += 1

    def delivered(self, size: int) -> None:
        """Count one delivery of ``size`` body bytes; end past the budget.

        The budget counts what the client accumulates (before any
        compression), which is what it bounds.
        """
        self.counts[self.name] += 1
        if self.max_bytes:
            self.spent(size)

    def spent(self, size: int) -> None:
        """``size`` more body bytes written: end past the budget (``Group.sweep``
        calls it too, for the live frames it writes itself)."""
        self.body_bytes += size
        if self.body_bytes >= self.max_bytes:
            self.end()

    def reset(self, channel: str, cursor: str | None) -> None:
        self.ctx.registry.resets[self.name] += 1
        self.write(self.reset_bytes(channel, cursor))

    def closed(self, channel: str) -> None:
        self.subscription = None  # the hub has already ended it
        self.write(self.closed_bytes(channel))
        self.end()

    def heartbeat(self) -> None:
        self.write(self.heartbeat_bytes())

    # -- ending ------------------------------------------------------------
    # -- the fan-out group (pushd.web.access joins it once the replay is over)
    def fan_out(self) -> tuple[str, Callable[[Message], bytes]] | None:
        if not self.groupable:
            return None
        return self.fmt, framer(self.fmt)

    def joined(self, group: Group) -> None:
        self.group = group

    def expire(self) -> None:
        """The token behind this stream expired: say so, then end; the client
        comes back with a fresh token and its cursor (pushd.web.access)."""
        self.expiry = None
        self.write(self.expired_bytes(self.channel))
        self.end()

    def end_politely(self) -> None:
        """Drain: say goodbye in this transport's way, then end."""
        self.write(self.goodbye_bytes())
        self.end()

    def end(self) -> None:
        """End the response cleanly and close; the client reconnects with its cursor.

        What waited in the outlet and the last chunk go out before the close.
        """
        if self.ended:
            return
        if self.group is not None:
            self.group.take(self)
        self.outlet.flush()
        if self.framed:
            self.outlet.write(LAST_CHUNK)
            self.outlet.flush()
        self._stop()
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _overflowed(self) -> None:
        self.ctx.registry.dropped[self.name] += 1
        self.log.warn(
            "dropped a slow {transport} client {peer} on {channel}",
            transport=self.name,
            peer=self.transport.getPeer(),
            channel=self.channel,
        )
        self._stop()

    def when_ended(self) -> Deferred[None]:
        """Fires once this stream has ended, however it ended."""
        d: Deferred[None] = Deferred()
        if self.ended:
            d.callback(None)
        else:
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(d)
        return d

    def _stop(self) -> bool:
        if self.ended:
            return False
        self.ended = True
        if self.expiry is not None and self.expiry.active():
            self.expiry.cancel()
        self.ctx.registry.bytes_sent[self.name] += self.outlet.sent
        self.heartbeat_timer.discard(self)
        self.ctx.registry.closed(self.name, self)
        if self.subscription is not None:
            self.subscription.cancel()
            self.subscription = None
        if self.group is not None:
            self.group.leave(self)
            self.group = None
        self.outlet.end()
        waiters, self._waiters = self._waiters, None
        for d in waiters or ():
            d.callback(None)
        return True
