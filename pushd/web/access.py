"""The one way every transport reads a channel, and every client publishes.

Poll, long-poll, NDJSON stream, SSE and WebSocket subscriptions all pass
here, in the same order: the channel name is checked, the authorization hook
is asked (before a stream has sent a byte, so a refusal is still a plain
JSON error), the reader is opened, the broker subscribes it (replay or
``reset``, then live), and once live it joins its channel's fan-out group,
if it has one.

The broker may answer later (Redis will): ``subscribe`` returns the reader
at once, and the hand-over to the group waits for the subscription's
``when_live``. Live messages published meanwhile wait in the subscription,
so nothing is lost or doubled at the seam.

A stream's status line and headers are its answer (for
``/channels/{ch}/ws``, the 101): a client that has them may have a message
published at once, on any node, and expects it. So these subscribe first,
with an :class:`Early` subscriber, and open their reader (send the answer)
only once the subscription is made, i.e. live (:func:`answer_when_live`,
:func:`subscribe_early`, :func:`open_early`): before that, a Redis node that
did not follow the channel does not know where the channel is, and a message
published on another node in that instant would be before a position read
after it. The memory broker, and a Redis node that follows the channel, are
live at once: nothing waits.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, TypeVar

from twisted.internet.defer import Deferred

from pushd.broker.interface import Page, Receipt, Subscriber, Subscription
from pushd.fanout import Group, Member
from pushd.model import Message, Payload, check_channel
from pushd.web.context import Context
from pushd.web.render import then


class Reader(Subscriber, Protocol):
    """A transport's end of one subscription."""

    name: str  # the transport, for counters
    subscription: Subscription | None

    @property
    def ended(self) -> bool:
        """Whether the reader has stopped wanting messages."""

    def fan_out(self) -> tuple[str, Callable[[Message], bytes]] | None:
        """The wire format (its ``Message.encoded`` key) whose frames a
        fan-out group may write for this reader once it is live, and how to
        frame a message in it; None to be delivered to one by one. The
        function must not hold the reader: the group outlives its members."""

    def joined(self, group: Any) -> None:
        """The reader's live messages now come through ``group``."""


R = TypeVar("R", bound=Reader)


def allow(ctx: Context, who: object, action: str, channel: str) -> str:
    """Check ``channel`` and ask the authorization hook; ``channel`` back.

    ``who`` is what the hook judges: the HTTP request, or the WebSocket
    connection. Raises :class:`~pushd.errors.PushdError` when refused.
    """
    check_channel(channel)
    ctx.authorize(who, action, channel)
    return channel


def publish(
    ctx: Context, who: object, items: Sequence[tuple[str, Payload, str]]
) -> Deferred[list[Message]]:
    """Every client publish (HTTP one, HTTP batch, WebSocket frame): each
    channel checked and allowed (:func:`allow`), the publisher's rate taken
    (:func:`limit_rate`; a batch costs one per message), then stored all or
    nothing."""
    for channel, _, _ in items:
        allow(ctx, who, "publish", channel)
    if ctx.publish_rates is not None:
        limit_rate(ctx, who, len(items))
    return ctx.broker.publish_many(items)


def publish_keyed(
    ctx: Context, who: object, items: Sequence[tuple[str, Payload, str, str | None]]
) -> Deferred[list[Receipt]]:
    """:func:`publish` for items with an idempotency key (None: none), checked
    and charged the same way: a replay costs a publish from the rate too, as
    the client cannot tell it from a store before it asks."""
    for channel, _, _, _ in items:
        allow(ctx, who, "publish", channel)
    if ctx.publish_rates is not None:
        limit_rate(ctx, who, len(items))
    return ctx.broker.publish_keyed(items)


def limit_rate(ctx: Context, who: object, cost: int) -> None:
    """``[limits] publish_rate``: take ``cost`` publishes from the bucket of
    ``who``'s token subject, else of its client address; raises
    :class:`~pushd.rates.RateLimited` (429) over the rate.

    Runs after :func:`allow`, so a token here has been verified (its grants
    are cached) and a refused publish takes nothing from anyone's bucket.
    """
    rates = ctx.publish_rates
    assert rates is not None
    sub = None
    tokens = ctx.tokens
    if tokens is not None:
        token = tokens.token_of(who)
        if token is not None:
            sub = tokens.grants(token).sub
    rates.check(sub, ctx.clients.address(who) if sub is None else "", cost)


def read(
    ctx: Context, who: object, channel: str, since: str | None, limit: int
) -> Deferred[Page]:
    """A poll: up to ``limit`` messages after ``since`` (see ``Broker.read``)."""
    allow(ctx, who, "subscribe", channel)
    return ctx.broker.read(channel, since or None, limit)


def subscribe(
    ctx: Context, who: object, channel: str, since: str | None, open_reader: Callable[[], R]
) -> R:
    """Subscribe the reader ``open_reader()`` makes to ``channel`` from ``since``.

    Raises a PushdError before ``open_reader`` is called if the channel is
    bad or the hook refuses. Returns the reader at once; its replay may come
    now or later, and once it is over the reader joins its fan-out group.
    """
    allow(ctx, who, "subscribe", channel)
    reader = open_reader()
    sub = ctx.broker.subscribe(channel, reader, since or None)
    reader.subscription = sub
    if ctx.tokens is not None:
        _expire_with_token(ctx, who, reader)
    then(sub.when_live(), _live, ctx, reader, sub)
    return reader


def answer_when_live(
    ctx: Context, request: Any, channel: str, since: str | None, open_reader: Callable[[], R]
) -> None:
    """A stream: subscribe first, open the reader (send the head) once live.

    Raises a PushdError, as :func:`subscribe` does, before anything is
    subscribed. With a broker that answers at once (memory, or a Redis node
    already following the channel) the reader opens now; otherwise a client
    that leaves before then is unsubscribed.
    """
    early, sub = subscribe_early(ctx, request, channel, since)
    live = sub.when_live()
    if not live.called:
        request.notifyFinish().addErrback(lambda _: early.leave(sub))
    then(live, lambda _: early.gone or open_early(ctx, request, early, sub, open_reader))


def subscribe_early(
    ctx: Context, who: object, channel: str, since: str | None
) -> tuple[Early, Subscription]:
    """Subscribe before there is a reader (see :class:`Early`); the reader
    opens with :func:`open_early` once the subscription is live."""
    allow(ctx, who, "subscribe", channel)
    early = Early()
    return early, ctx.broker.subscribe(channel, early, since or None)


class Early:
    """A subscriber until its reader opens: keeps what it is told (a replay,
    a ``reset``, a ``closed``), then hands it over and steps aside (the
    reader's own methods take its place, so the hub calls the reader
    directly from then on)."""

    def __init__(self) -> None:
        self.told: list[tuple[str, Any]] = []
        self.gone = False  # the client left before the reader opened
        self.opened = False

    def deliver(self, message: Message) -> None:
        self.told.append(("deliver", message))

    def reset(self, channel: str, cursor: str | None) -> None:
        self.told.append(("reset", (channel, cursor)))

    def closed(self, channel: str) -> None:
        self.told.append(("closed", channel))

    def leave(self, sub: Subscription) -> None:
        """The client went away before its reader opened."""
        if not self.opened:
            self.gone = True
            sub.cancel()

    def open(self, reader: Reader) -> None:
        """Tell ``reader`` what came so far; from now on the hub tells it."""
        self.opened = True
        self.deliver = reader.deliver  # type: ignore[method-assign]
        self.reset = reader.reset  # type: ignore[method-assign]
        self.closed = reader.closed  # type: ignore[method-assign]
        told, self.told = self.told, []
        for kind, what in told:
            if reader.ended:
                return
            if kind == "deliver":
                reader.deliver(what)
            elif kind == "reset":
                reader.reset(*what)
            else:
                reader.closed(what)


def open_early(
    ctx: Context, who: Any, early: Early, sub: Subscription, open_reader: Callable[[], R]
) -> R:
    """The subscription is live (or ended): open the reader, tell it what
    came, and hand live delivery to its group; the reader."""
    reader = open_reader()
    reader.subscription = sub
    early.open(reader)  # a ``closed`` among it ends the reader
    if ctx.tokens is not None and not reader.ended:
        _expire_with_token(ctx, who, reader)
    _live(None, ctx, reader, sub)
    if ctx.registry.draining and not reader.ended and hasattr(reader, "end_politely"):
        reader.end_politely()  # the drain began before it opened: told the others only
    return reader


def _expire_with_token(ctx: Context, who: object, reader: Reader) -> None:
    """End ``reader`` the moment the token it was allowed by expires.

    A stream or a held long-poll says ``expired`` in its own way (its
    ``expire``); a WebSocket's token is the connection's, which handles its
    expiry itself (pushd.web.ws), so its channel readers have no ``expire``.
    """
    expire = getattr(reader, "expire", None)
    tokens = ctx.tokens
    at = tokens.expires(who) if tokens is not None else None
    if expire is None or at is None or reader.ended:
        return
    # on the clock tokens are judged by (the reactor; a test's Clock)
    clock = tokens.clock  # type: ignore[union-attr]
    reader.expiry = clock.callLater(max(0.0, at - clock.seconds()), expire)  # type: ignore[attr-defined]


def _live(_: object, ctx: Context, reader: Reader, sub: Subscription) -> None:
    """The replay is over: hand live delivery to the channel's group."""
    if reader.ended:  # ended during its replay (a byte budget, a slow client)
        sub.cancel()
        return
    if reader.subscription is not sub:  # closed meanwhile
        return
    fan_out = reader.fan_out()
    if fan_out is None:
        return
    fmt, frame = fan_out
    group = join_group(ctx, (sub.channel, fmt), frame, sub, reader, reader.name)
    if group is not None:
        reader.joined(group)


def join_group(
    ctx: Context,
    key: tuple[str, str],
    frame: Callable[[Message], bytes],
    subscription: Any,
    member: Member,
    transport: str,
) -> Group | None:
    """Put ``member`` in the group of ``key`` (channel, wire format); the group, or None.

    The group is made, with its broker watch, on first use. ``subscription``
    (the member's own, just past its replay) hands its delivery over to the
    group's watch; when it cannot (not at the same message), the member
    stays on its own subscription and None is returned.
    """
    group = ctx.groups.get(key)
    if group is None:
        group = Group(frame, ctx.flusher, lambda g: _dissolve(ctx, key, g),
                      ctx.registry.deliveries, transport)
        group.subscription = ctx.broker.watch(key[0], group)
        ctx.groups[key] = group
    if subscription.hand_over(group.subscription):
        group.join(member)
        return group
    if not group.members:
        _dissolve(ctx, key, group)
    return None


def _dissolve(ctx: Context, key: tuple[str, str], group: Group) -> None:
    """A group with no members left stops watching its channel."""
    if ctx.groups.get(key) is group:
        del ctx.groups[key]
    if group.subscription is not None:
        group.subscription.cancel()
        group.subscription = None
