"""Long-polling: ``GET /channels/{ch}/longpoll?since=&timeout=``.

Anything already after ``since`` is answered at once, like a poll. Otherwise
the request is held as a subscription from the answer's cursor, so a message
published between the read and the hold is replayed, not lost. It is answered
by the first message, the timeout, a ``closed`` channel or a drain. A client
that leaves makes Klein cancel the handler's Deferred; the canceller drops the
subscription and the timer at once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.server import Request

from pushd.broker.interface import Page
from pushd.model import Message
from pushd.web import access
from pushd.web.context import Context
from pushd.web.render import then
from pushd.web.request import arg, json_response, number_arg
from pushd.wire import poll_body, poll_page

LONGPOLL = "longpoll"  # Message.encoded key: the answer that carries just this message


class Waiter:
    """The broker's subscriber for one held request; answers exactly once."""

    name = "longpoll"

    def __init__(self, ctx: Context, request: Request, channel: str, cursor: str | None) -> None:
        self.ctx = ctx
        self.request = request
        self.channel = channel
        self.cursor = cursor
        self.answer: Deferred[bytes] = Deferred(lambda d: self._stop())
        self.subscription: Any = None
        self.timer: Any = None
        self.expiry: Any = None  # when the token behind it expires (pushd.web.access)

    def hold(self, timeout: float) -> Waiter:
        """Count the request as held and start its timeout; then subscribe it."""
        self.ctx.registry.opened(self.name, self)
        self.timer = self.ctx.clock.callLater(timeout, self.end_politely)
        return self

    @property
    def ended(self) -> bool:
        return self.answer.called

    def fan_out(self) -> None:
        """A held request takes one answer: it never joins a fan-out group."""

    def joined(self, group: Any) -> None:
        """Never called (see :meth:`fan_out`)."""

    def deliver(self, message: Message) -> None:
        self.ctx.registry.deliveries[self.name] += 1
        # every waiter of the channel answers the same bytes: made once
        body = message.encoded.get(LONGPOLL)
        if body is None:
            body = message.encoded[LONGPOLL] = poll_body([message], message.id)
        self._answer(body)

    def reset(self, channel: str, cursor: str | None) -> None:
        self.ctx.registry.resets[self.name] += 1
        self._answer(poll_body([], cursor, reset=True))

    def closed(self, channel: str) -> None:
        self.subscription = None
        self._answer(poll_body([], self.cursor, closed=True))

    def expire(self) -> None:
        """The token behind the held request expired: answer so; the client
        asks again with a fresh token and the same cursor."""
        self.expiry = None
        self._answer(poll_body([], self.cursor, expired=True))

    def end_politely(self) -> None:
        """Timeout or drain: nothing new, here is the same cursor."""
        self.timer = None
        self._answer(poll_body([], self.cursor))

    def _answer(self, body: bytes) -> None:
        if self._stop():
            self.answer.callback(json_response(self.request, body))

    def _stop(self) -> bool:
        if self.answer.called:
            return False
        self.ctx.registry.closed(self.name, self)
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.expiry is not None and self.expiry.active():
            self.expiry.cancel()
        self.expiry = None
        if self.subscription is not None:
            self.subscription.cancel()
            self.subscription = None
        return True


def longpoll(ctx: Context, request: Request, channel: str) -> Deferred[bytes]:
    since = arg(request, "since") or None
    settings = ctx.settings.longpoll
    timeout = number_arg(request, "timeout", settings.timeout, 0, settings.max_timeout)
    limit = ctx.settings.poll.max_limit
    request.setHeader(b"Cache-Control", b"no-cache")
    # Without a cursor a long-poll waits for the next message: ask only for
    # the current position, not for history. Callbacks rather than a
    # coroutine: a thousand clients re-poll after every message.
    d = access.read(ctx, request, channel, since, limit if since else 0)
    return then(d, _read, ctx, request, channel, timeout)  # type: ignore[no-any-return]


def _read(
    page: Page, ctx: Context, request: Request, channel: str, timeout: float
) -> bytes | Deferred[bytes]:
    """Answer at once, or hold: the request's Deferred then waits on the waiter's
    (a client that leaves cancels it, and the waiter's canceller unsubscribes)."""
    if page.reset:
        ctx.registry.resets["longpoll"] += 1
        return json_response(request, poll_body([], page.cursor, reset=True))
    if page.messages:
        # at most [poll] max_bytes of them; the client asks again from the cursor
        messages, cursor = poll_page(page.messages, page.cursor, ctx.settings.poll.max_bytes)
        ctx.registry.deliveries["longpoll"] += len(messages)
        return json_response(request, poll_body(messages, cursor))
    if ctx.registry.draining or timeout == 0:
        return json_response(request, poll_body([], page.cursor))
    waiter = access.subscribe(
        ctx, request, channel, page.cursor,
        lambda: Waiter(ctx, request, channel, page.cursor).hold(timeout),
    )
    return waiter.answer
