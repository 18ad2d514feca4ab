"""WebSocket: ``/ws`` and ``/channels/{ch}/ws``, JSON text frames, many channels.

Autobahn owns the WebSocket protocol itself (handshake, framing, UTF-8
validation, size limits, close codes, auto-ping); this module only parses a
frame into a command, acts on it, and encodes the answer with :mod:`pushd.wire`.

Each channel a connection follows is its own broker subscription with its own
cursor (a :class:`ChannelFeed`), so every channel keeps the promise of the
other transports: replay, then live, no gap, no duplicate.

Every frame pushd writes goes through one :class:`~pushd.outlet.Outlet` per
connection, registered as the connection's push producer, so a client that
stops reading is dropped once its bounded queue is full, like the HTTP
streams. A message is framed once for every connection that did not
negotiate permessage-deflate (Autobahn's ``PreparedMessage``, cached on the
message), and compressed per connection only for those that did.
"""

from __future__ import annotations

from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)
from autobahn.websocket.protocol import PreparedMessage, WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from pushd import compat
from pushd.auth import Tokens
from pushd.errors import PushdError, bad_request
from pushd.fanout import Group
from pushd.model import Message, Payload, check_channel, check_event, json_payload, loads_json
from pushd.outlet import Outlet
from pushd.web import access
from pushd.web.context import Context
from pushd.web.origins import OriginPolicy
from pushd.wire import closed_object, dumps, encode, reset_object

TRANSPORT = "ws"
FRAME = "ws-frame"  # key of the framed message bytes in Message.encoded
OPEN = WebSocketProtocol.STATE_OPEN
_PING_PONG = (0x9, 0xA)  # the opcodes of the control frames that go through the outlet
# pushd's own messages. Not the protocol's ``log`` attribute: Autobahn logs
# through that at debug level several times per handshake, with pprint'ed
# headers, and its txaio logger makes those calls no-ops below the global
# level. A Twisted Logger there would format and emit every one of them.
log = Logger()


# -- parse ---------------------------------------------------------------------
@dataclass(frozen=True)
class Subscribe:
    channel: str
    since: str | None


@dataclass(frozen=True)
class Unsubscribe:
    channel: str


@dataclass(frozen=True)
class Publish:
    channel: str
    data: Payload  # a frame's data is a JSON value, a string included
    event: str


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Auth:
    token: str  # replaces the connection's token (DESIGN "Who may publish and read")


Command = Subscribe | Unsubscribe | Publish | Ping | Auth

# The fields each command may carry: an unknown one (a typo such as "sinse")
# is an error rather than silently ignored.
_FIELDS = {
    "subscribe": frozenset({"type", "channel", "since"}),
    "unsubscribe": frozenset({"type", "channel"}),
    "publish": frozenset({"type", "channel", "data", "event"}),
    "ping": frozenset({"type"}),
    "auth": frozenset({"type", "token"}),
}


def _bad_frame(message: str) -> PushdError:
    return bad_request("bad_frame", message)


def parse_command(payload: bytes, is_binary: bool) -> Command:
    """One client frame as a command, or a PushdError naming what is wrong."""
    if is_binary:
        raise bad_request("binary_not_supported", "send JSON text frames, not binary")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:  # Autobahn closes with 1007 first; kept for safety
        raise bad_request("bad_utf8", "the frame is not valid UTF-8") from None
    obj = loads_json(text)
    if not isinstance(obj, dict):
        raise _bad_frame('a frame is a JSON object with a "type"')
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise _bad_frame('a frame needs a "type" string')
    allowed = _FIELDS.get(kind)
    if allowed is None:
        raise bad_request(
            "unknown_type", f"unknown type {kind[:40]!r}: use {', '.join(_FIELDS)}"
        )
    unknown = sorted(obj.keys() - allowed)
    if unknown:
        raise _bad_frame(f"unknown field {unknown[0][:40]!r} in {kind}")
    if kind == "ping":
        return Ping()
    if kind == "auth":
        token = obj.get("token")
        if not isinstance(token, str) or not token:
            raise _bad_frame("auth needs a token (a string)")
        return Auth(token)
    channel = check_channel(obj.get("channel"))
    if kind == "subscribe":
        since = obj.get("since")
        if since is not None and not isinstance(since, str):
            raise _bad_frame("since must be a message id (a string) or null")
        return Subscribe(channel, since or None)
    if kind == "unsubscribe":
        return Unsubscribe(channel)
    if "data" not in obj:
        raise _bad_frame("publish needs data")
    return Publish(channel, json_payload(obj["data"], checked=True), check_event(obj.get("event")))


def error_object(error: PushdError, channel: str | None = None) -> dict[str, Any]:
    """An error frame; it names the channel of the frame it answers, if any."""
    obj: dict[str, Any] = {"type": "error", "code": error.code, "message": error.message}
    if channel is not None:
        obj["channel"] = channel
    return obj


def _latin1(value: str | None) -> bytes | None:
    return None if value is None else value.encode("latin-1")


PONG = dumps({"type": "pong"})


def frame_of(factory: WebSocketServerFactory, message: Message) -> bytes:
    """``message`` as one unmasked text frame's bytes, framed once and cached on it."""
    cache = message.encoded
    frame = cache.get(FRAME)
    if frame is None:
        prepared: PreparedMessage = factory.prepareMessage(encode(message, "typed"))
        frame = cache[FRAME] = prepared.payloadHybi
    return frame  # type: ignore[no-any-return]


# -- the broker's subscriber, one per (connection, channel) ---------------------
class ChannelFeed:
    """One connection's subscription to one channel.

    Replay comes through :meth:`deliver`; live messages through the
    channel's :class:`~pushd.fanout.Group` of shared frames once the
    connection joined it (connections without compression), the group
    sweeping this feed as one of its members.
    """

    max_bytes = 0  # no byte budget on a WebSocket: the group never calls spent()
    name = TRANSPORT

    def __init__(self, conn: WsProtocol, channel: str) -> None:
        self.conn = conn
        self.channel = channel
        self.subscription: Any = None
        self.group: Group | None = None
        self.pos = 0  # in the group
        self._ended = False
        # feeds are made once the connection is open, and so has its outlet
        self.outlet: Outlet = conn.outlet  # type: ignore[assignment]
        # The group writes our frames to the outlet itself (Group.sweep). It
        # cannot see the WebSocket's state: the connection takes its feeds
        # out of their groups before it closes (WsProtocol._leave_groups).
        self.direct: Outlet | None = self.outlet

    @property
    def ended(self) -> bool:
        conn = self.conn
        return self._ended or conn.ended or conn.state != OPEN

    def fan_out(self) -> tuple[str, Callable[[Message], bytes]] | None:
        """Shared frames, unless the connection compresses every message itself."""
        if self.conn.deflate:
            return None
        return FRAME, self.conn.factory.frame

    def joined(self, group: Group) -> None:
        self.group = group

    def deliver(self, message: Message) -> None:
        self.conn.send_message(message)

    def pulled(self, data: bytes, count: int) -> None:
        """Frames from the group (when the connection writes something itself)."""
        if not self.ended:
            self.conn.counts[TRANSPORT] += count
            self.outlet.write_now(data)

    def reset(self, channel: str, cursor: str | None) -> None:
        self.conn.ctx.registry.resets[TRANSPORT] += 1
        self.conn.send_json(reset_object(channel, cursor))

    def closed(self, channel: str) -> None:
        self.subscription = None  # the hub has already ended it
        self.conn.feed_closed(self)
        self._leave()

    def cancel(self) -> None:
        if self.group is not None and not self.ended:
            self.group.take(self)  # what was published before: still ours
        if self.subscription is not None:
            self.subscription.cancel()
            self.subscription = None
        self._leave()

    def _leave(self) -> None:
        self._ended = True
        self.leave_group()

    def leave_group(self) -> None:
        """Take no more frames from the group (the subscription may go on)."""
        if self.group is not None:
            self.group.leave(self)
            self.group = None


# -- the connection ---------------------------------------------------------------
class WsProtocol(WebSocketServerProtocol):
    """One WebSocket client: parse a frame, act on it, encode the answer."""

    factory: WsFactory
    url_channel: str | None = None  # set for /channels/{ch}/ws

    def __init__(self) -> None:
        super().__init__()
        self.feeds: dict[str, ChannelFeed] = {}
        self.outlet: Outlet | None = None
        self.deflate = False
        self.ended = False
        self._open_since: str | None = None
        self._through_outlet = False
        self.counts: dict[str, int] = {}  # the registry's, from onOpen on
        self._holding: Deferred[None] | None = None  # a subscribe's replay under way
        self._held: deque[tuple[bytes, bool]] = deque()  # frames that came meanwhile

    @property
    def ctx(self) -> Context:
        return self.factory.ctx

    # -- handshake and lifetime --------------------------------------------
    handshake_headers: dict[str, str] = {}
    # The token the authorization hook judges this connection by (pushd.auth):
    # the handshake's, then each accepted auth frame's.
    bearer: str | None = None
    _deny_headers: list[tuple[str, str]] | None = None

    @property
    def peer_host(self) -> str:
        """The peer's address, for the authorization hook (pushd.web.clients)."""
        return str(getattr(self.transport.getPeer(), "host", ""))

    def getHeader(self, name: bytes) -> bytes | None:
        """A header of the handshake (the authorization hook reads proxy headers)."""
        value = self.handshake_headers.get(name.decode("latin-1").lower())
        return None if value is None else value.encode("latin-1")

    def onConnect(self, request: ConnectionRequest) -> None:
        self.handshake_headers: dict[str, str] = request.headers
        # request.host has lost its port; the policy compares host:port.
        host = request.headers.get("host")
        if not self.factory.origins.allows(request.origin or None, host):
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        since = request.params.get("since")
        self._open_since = since[0] if since and since[0] else None
        tokens = self.ctx.tokens
        if tokens is not None:  # keys are configured: judge the handshake's token
            self._check_handshake(tokens, request)
        if self.url_channel is not None:
            return self._subscribe_early(self.url_channel)
        return None

    _early: tuple[access.Early, Any] | None = None  # the URL's subscription, before the open

    def _subscribe_early(self, channel: str) -> Deferred[None] | None:
        """``/channels/{ch}/ws``: its 101 is its answer, so it is sent once the
        subscription is made (live), as a stream's head is
        (:func:`pushd.web.access.answer_when_live`); onOpen adopts it. A
        refused one is subscribed in onOpen instead, which answers the
        refusal in an error frame."""
        try:
            early, sub = self._early = access.subscribe_early(
                self.ctx, self, channel, self._open_since
            )
        except PushdError:
            return None
        live = sub.when_live()
        if live.called:
            return None

        def made(_: object) -> None:
            if early.gone:
                raise ConnectionDeny(ConnectionDeny.SERVICE_UNAVAILABLE, "gone")

        return live.addCallback(made)

    def _check_handshake(self, tokens: Tokens, request: ConnectionRequest) -> None:
        """Refuse (401/403) a bad token, or a channel URL the client may not read."""
        headers = request.headers
        self.bearer = tokens.from_request(
            lambda name: _latin1(headers.get(name.decode("latin-1"))),
            [v.encode("latin-1") for v in request.params.get("token", ())],
        )
        try:
            if self.bearer is not None:
                tokens.grants(self.bearer)
            if self.url_channel is not None:
                self.ctx.authorize(self, "subscribe", self.url_channel)
        except PushdError as e:
            self._deny_headers = [(k.decode(), v.decode()) for k, v in e.headers]
            # the message is the status line's reason: printable ASCII only
            reason = "".join(c if " " <= c <= "~" else "?" for c in e.message)
            raise ConnectionDeny(e.status, reason) from None

    def failHandshake(
        self, reason: str, code: int = 400, responseHeaders: Any = None
    ) -> None:
        """A refused handshake's answer carries its error's headers (a 401's
        ``WWW-Authenticate``)."""
        if self._deny_headers:
            responseHeaders = [*(responseHeaders or ()), *self._deny_headers]
        super().failHandshake(reason, code, responseHeaders)

    def onOpen(self) -> None:
        self.deflate = compat.compresses(self)
        transport = self.transport
        # The HTTP channel that parsed the handshake is still the transport's
        # producer; the outlet takes its place so a slow reader pauses us.
        transport.unregisterProducer()
        self.outlet = Outlet(
            transport, self.ctx.settings.limits.queue, self._overflowed, self.ctx.flusher
        )
        transport.registerProducer(self.outlet, True)
        self.counts = self.ctx.registry.deliveries  # per transport, bumped per delivery
        self.ctx.registry.opened(TRANSPORT, self)
        self._arm_expiry()
        if self._early is not None:
            early, sub = self._early
            self._early = None
            channel = sub.channel
            access.open_early(self.ctx, self, early, sub, lambda: self._open(channel))
        elif self.url_channel is not None:
            try:
                self.act(Subscribe(self.url_channel, self._open_since))
            except PushdError as e:
                self.send_json(error_object(e, self.url_channel))

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._holding is not None:  # reading is paused; at most one read's frames
            self._held.append((payload, isBinary))
            return
        try:
            command = parse_command(payload, isBinary)
        except PushdError as e:
            self.send_json(error_object(e))
            return
        try:
            self.act(command)
        except PushdError as e:
            self.send_json(error_object(e, getattr(command, "channel", None)))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._stop()

    def end_politely(self) -> None:
        """Drain: end every subscription and close with 1001 (going away)."""
        if self.outlet is not None:
            self._catch_up()
            self.outlet.flush()
        self._stop()
        if self.state == WebSocketProtocol.STATE_OPEN:
            # sendClose() refuses 1001; the frame-level call allows it.
            self.sendCloseFrame(code=1001, reasonUtf8=b"server going away", isReply=False)

    # -- act ------------------------------------------------------------------
    def act(self, command: Command) -> None:
        """Carry out one command; a PushdError becomes an error frame."""
        match command:
            case Subscribe(channel, since):
                self.subscribe(channel, since)
            case Unsubscribe(channel):
                self.unsubscribe(channel)
            case Publish(channel, data, event):
                self.publish(channel, data, event)
            case Ping():
                self.send_payload(PONG)
            case Auth(token):
                self.authenticate(token)

    def authenticate(self, token: str) -> None:
        """An auth frame: a valid token replaces the connection's; a bad one
        is an error frame and the old token stays.

        The new token is judged alone, as at a subscribe: a channel it does
        not allow to read (a renewal with fewer rights, a revoked grant) is
        unsubscribed, with the error frame a subscribe would have had."""
        tokens = self.ctx.tokens
        exp = None
        if tokens is not None:  # with no key, tokens are not looked at
            exp = tokens.grants(token).exp
            self.bearer = token
        self.send_json({"type": "auth", "ok": True, "exp": None if exp is None else int(exp)})
        self._arm_expiry()
        if tokens is not None:
            for channel in list(self.feeds):
                try:
                    self.ctx.authorize(self, "subscribe", channel)
                except PushdError as e:
                    self.unsubscribe(channel)
                    self.send_json(error_object(e, channel))

    # -- the token's expiry ---------------------------------------------------
    _expiry: Any = None  # fires when the connection's token expires
    _grace: Any = None  # fires when the grace after that is over

    def _arm_expiry(self) -> None:
        """Watch the connection's token: when it expires the client is told
        ``{"type":"expired"}`` and has ``[auth] grace`` seconds to send an
        auth frame with a new one; messages keep flowing meanwhile, so a
        renewal loses nothing. Without one the connection closes with 4001."""
        self._disarm_expiry()
        tokens = self.ctx.tokens
        if tokens is None or self.bearer is None:
            return
        clock = tokens.clock  # the clock tokens are judged by
        try:
            at = tokens.expires(self)
        except PushdError:  # expired since it was checked: now
            at = clock.seconds()
        if at is not None:
            self._expiry = clock.callLater(max(0.0, at - clock.seconds()), self._expired)

    def _disarm_expiry(self) -> None:
        for timer in (self._expiry, self._grace):
            if timer is not None and timer.active():
                timer.cancel()
        self._expiry = self._grace = None

    def _expired(self) -> None:
        self._expiry = None
        self.send_json({"type": "expired"})
        clock = self.ctx.tokens.clock  # type: ignore[union-attr]
        self._grace = clock.callLater(self.ctx.settings.auth.grace, self._grace_over)

    def _grace_over(self) -> None:
        self._grace = None
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendClose(code=4001, reason="the token expired")

    def subscribe(self, channel: str, since: str | None) -> None:
        if channel in self.feeds:
            raise PushdError(409, "already_subscribed", f"already subscribed to {channel}")
        limit = self.ctx.settings.websocket.max_subscriptions
        if limit and len(self.feeds) >= limit:
            raise PushdError(
                429, "too_many_subscriptions", f"at most {limit} channels per connection"
            )
        feed = access.subscribe(self.ctx, self, channel, since, lambda: self._open(channel))
        live = feed.subscription.when_live()  # type: ignore[union-attr]
        if not live.called:
            # Frames are answered in the order they came: hold the ones after
            # this subscribe until its replay is over.
            self._holding = live
            self.transport.pauseProducing()
            live.addCallback(self._go_on)

    def _open(self, channel: str) -> ChannelFeed:
        feed = self.feeds[channel] = ChannelFeed(self, channel)
        return feed

    def _go_on(self, _: object) -> None:
        """A subscribe's replay is over: answer the frames that waited for it."""
        self._holding = None
        while self._held and self._holding is None:
            self.onMessage(*self._held.popleft())
        if self._holding is None and not self.ended:
            self.transport.resumeProducing()

    def unsubscribe(self, channel: str) -> None:
        feed = self.feeds.pop(channel, None)
        if feed is None:
            raise PushdError(404, "not_subscribed", f"not subscribed to {channel}")
        feed.cancel()

    def publish(self, channel: str, data: Payload, event: str) -> None:
        if not self.ctx.settings.websocket.publish:
            raise PushdError(
                403, "forbidden", "publishing over WebSocket is off ([websocket] publish)"
            )
        d = access.publish(self.ctx, self, [(channel, data, event)])
        d.addErrback(self._publish_failed, channel)

    def _publish_failed(self, failure: Failure, channel: str) -> None:
        if failure.check(PushdError):  # the store refused: rights were checked before
            self.send_json(error_object(failure.value, channel))
            return
        log.failure("publishing over WebSocket failed", failure)
        self.send_json(error_object(PushdError(500, "internal", "publishing failed")))

    def feed_closed(self, feed: ChannelFeed) -> None:
        if self.feeds.get(feed.channel) is feed:
            del self.feeds[feed.channel]
        self.send_json(closed_object(feed.channel))

    # -- encode and write -----------------------------------------------------
    def _writable(self) -> bool:
        return not self.ended and self.state == OPEN

    def send_message(self, message: Message) -> None:
        """One broker message: the shared frame, or compressed for this client.

        Runs once per delivery: the frame's bytes come straight from the
        message's cache, and the counter is held directly.
        """
        if self.ended or self.state != OPEN:
            return
        if self.deflate:
            self.send_payload(encode(message, "typed"))
        else:
            frame = message.encoded.get(FRAME) or frame_of(self.factory, message)
            self.outlet.write(frame)  # type: ignore[union-attr]
        self.counts[TRANSPORT] += 1

    def send_json(self, obj: dict[str, Any]) -> None:
        self.send_payload(dumps(obj))

    def send_payload(self, payload: bytes) -> None:
        """Frame ``payload`` for this connection alone (notices, deflate)."""
        if self._writable():
            self._catch_up()
            with self._outgoing():
                self.sendMessage(payload)

    def _catch_up(self) -> None:
        """Take what the groups hold for us, so it goes before what we write next.

        Nothing once the connection is closing: no data frame may follow a close.
        """
        if self.state != OPEN:
            return
        for feed in self.feeds.values():
            if feed.group is not None:
                feed.group.take(feed)

    @contextmanager
    def _outgoing(self) -> Iterator[None]:
        """Route Autobahn's own framing through the outlet, without its size cap.

        ``maxMessagePayloadSize`` guards what a client may send us; Autobahn
        also applies it to what we send, which would refuse a message the
        broker accepted (the envelope adds bytes to its data) after the
        compressor had already taken it in.
        """
        limit = self.maxMessagePayloadSize
        self._through_outlet = True
        self.maxMessagePayloadSize = 0
        try:
            yield
        finally:
            self._through_outlet = False
            self.maxMessagePayloadSize = limit

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """Every frame we send queues in the outlet, counted against the
        connection's ``[limits] queue``; only a close frame goes direct.

        Autobahn writes its control frames here itself. A pong answers each
        ping a client sends, so a client that floods pings and never reads
        would otherwise grow the connection's buffer without bound: pings
        and pongs take the outlet's bounded queue, behind what the groups
        hold for us, and the client is dropped once too much waits. A close
        frame (one per connection) first lets every frame the outlet holds
        go out, so nothing we sent before it arrives after it; the close
        itself must not wait in a queue that ending the connection discards.
        """
        outlet = self.outlet
        if outlet is None:  # the handshake's answer
            super().sendData(data, sync, chopsize)
        elif self._through_outlet:
            outlet.write(data)
        elif data and data[0] & 0x0F in _PING_PONG and not (sync or chopsize):
            self._catch_up()
            outlet.write(data)
        else:
            self._catch_up()
            outlet.flush()
            super().sendData(data, sync, chopsize)

    def sendCloseFrame(
        self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False
    ) -> None:
        """Close, then let no group sweep a data frame out behind the close frame."""
        super().sendCloseFrame(code, reasonUtf8, isReply)
        self._leave_groups()

    def dropConnection(self, abort: bool = False) -> None:
        """Drop the TCP connection; nothing more is written to it."""
        self._leave_groups()
        super().dropConnection(abort)

    def _leave_groups(self) -> None:
        """Groups write our frames without looking at the WebSocket's state
        (:class:`ChannelFeed`): once it leaves OPEN, they must stop."""
        for feed in self.feeds.values():
            feed.leave_group()

    # -- ending ---------------------------------------------------------------
    def _overflowed(self) -> None:
        self.ctx.registry.dropped[TRANSPORT] += 1
        log.info("dropped a slow WebSocket client ({peer})", peer=self.peer)
        self._stop()

    def _stop(self) -> None:
        """End every subscription and leave the registry; safe to repeat."""
        if self.ended:
            return
        self.ended = True
        if self._early is not None:  # gone during the handshake
            self._early[0].leave(self._early[1])
            self._early = None
        self._disarm_expiry()
        feeds, self.feeds = self.feeds, {}
        for feed in feeds.values():
            feed.cancel()
        if self.outlet is not None:
            self.ctx.registry.bytes_sent[TRANSPORT] += self.outlet.sent
            self.outlet.end()
        self.ctx.registry.closed(TRANSPORT, self)


def _accept_deflate(offers: list[Any]) -> PerMessageDeflateOfferAccept | None:
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


def _refuse_compression(offers: list[Any]) -> None:
    return None


class _Call:
    """A timer Autobahn may cancel after it fired (it sometimes does)."""

    __slots__ = ("call",)

    def __init__(self, call: IDelayedCall) -> None:
        self.call = call

    def cancel(self) -> None:
        if self.call.active():
            self.call.cancel()


class _Timers:
    """Autobahn's handshake, close and auto-ping timers, on our clock.

    Autobahn's default (txaio's batched timer) reads the global reactor and
    rounds every deadline down to a whole second: a 0.5 s ping timeout fires
    at once, and any timeout may fire up to a second early. This replaces
    the factory's ``_batched_timer``, which is all Autobahn asks of it.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock

    def call_later(self, delay: float, func: Callable[..., Any], *args: Any, **kw: Any) -> _Call:
        return _Call(self.clock.callLater(delay, func, *args, **kw))


class WsFactory(WebSocketServerFactory):
    """One per daemon: the settings every connection shares."""

    def frame(self, message: Message) -> bytes:
        """``message`` as a shared, unmasked text frame (cached on it)."""
        return message.encoded.get(FRAME) or frame_of(self, message)

    protocol = WsProtocol

    def __init__(self, ctx: Context, origins: OriginPolicy) -> None:
        super().__init__(reactor=ctx.clock)
        compat.use_timers(self, _Timers(ctx.clock))
        self.ctx = ctx
        self.origins = origins
        ws, limits = ctx.settings.websocket, ctx.settings.limits
        self.setProtocolOptions(
            webStatus=False,  # a plain GET gets 426, not Autobahn's HTML page
            maxFramePayloadSize=limits.message_size,
            maxMessagePayloadSize=limits.message_size,
            # Close protocol violations with their code (1002, 1007, 1009)
            # instead of dropping TCP, so a client can tell what it did.
            failByDrop=False,
            autoPingInterval=ws.ping_interval,
            autoPingTimeout=ws.ping_timeout if ws.ping_interval else 0,
            perMessageCompressionAccept=_accept_deflate if ws.deflate else _refuse_compression,
            # Origins are checked in onConnect against our policy; Autobahn's
            # own check (allowedOrigins stays "*") must not refuse "null" first.
            allowNullOrigin=True,
        )
        # Autobahn copies each of ~40 options from the factory onto every
        # new connection, and pformats them all for a debug line, unless the
        # protocol class already has them. A subclass per factory holding
        # them as class attributes spares every connection both (the options
        # are set once, above, and never change afterwards).
        options = {name: _class_attr(getattr(self, name)) for name in WsProtocol.CONFIG_ATTRS}
        self.protocol = type("WsProtocol", (WsProtocol,), {**options, "CONFIG_ATTRS": ()})


def _class_attr(value: Any) -> Any:
    """``value`` as a class attribute reads it back from an instance."""
    return staticmethod(value) if callable(value) else value


class _Opening:
    """What WebSocketResource needs of a factory, for one handshake.

    It tells the protocol which channel the URL named; Autobahn parses the
    request again itself and would not know Klein's route.
    """

    def __init__(self, factory: WsFactory, channel: str | None) -> None:
        self.factory = factory
        self.channel = channel

    def buildProtocol(self, addr: Any) -> WsProtocol:
        proto: WsProtocol = self.factory.buildProtocol(addr)
        proto.url_channel = self.channel
        return proto


def resource(factory: WsFactory, channel: str | None = None) -> WebSocketResource:
    """The resource a route returns; a bad channel is a 400 before any upgrade.

    Autobahn takes the request's connection over. The HTTP channel's idle
    timer needs no care: Twisted stops it while a request is being handled,
    and this request never finishes.
    """
    if channel is not None:
        check_channel(channel)
    return WebSocketResource(_Opening(factory, channel))
