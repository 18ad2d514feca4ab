"""The small Redis client the Redis broker needs: commands, pipelining, pub/sub.

Why not txredisapi (which the ``redis`` source uses): its subscriber does not
subscribe again after a reconnect, it gives up reconnecting for good after
one failed AUTH or SELECT, a command issued while it is disconnected waits
forever, and the confirmations of a SUBSCRIBE naming several channels are
matched to whichever commands wait next (``tests/test_redis_client.py``
shows each). A broker that promises "nothing lost when Redis comes back"
needs all four right, so it owns its connection instead: hiredis parses the
replies (C, the parser redis-py uses), the rest is here.

A :class:`Link` is one connection that is made again whenever it is lost,
forever, with a capped backoff, on the clock it is given. While it is not
up, a command waits for it at most ``timeout`` seconds, then fails with
:class:`Unavailable`; a command left unanswered for ``timeout`` seconds
fails the same way and drops the
connection (every reply after it would be out of step, and a Redis that
does not answer is as good as gone). Pub/sub confirmations and messages
are not replies to anyone: they go to ``on_push`` as they are, so each
confirmation is matched by the channel it names.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import hiredis
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

PUSH_KINDS = frozenset({b"message", b"subscribe", b"unsubscribe"})


class Unavailable(Exception):
    """Redis cannot be reached, or did not answer in time."""


class ReplyError(Exception):
    """An error reply from Redis (``-ERR ...``, ``-NOSCRIPT ...``)."""


class RedisURL:
    """``redis://[user:password@]host[:port][/db]`` or ``rediss://`` (TLS)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"not a redis:// or rediss:// URL: {url!r}")
        self.tls = parts.scheme == "rediss"
        self.host = parts.hostname or "127.0.0.1"
        try:
            self.port = parts.port or 6379
        except ValueError:
            raise ValueError(f"bad port in {url!r}") from None
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"the path of {url!r} must be a database number")
        self.db = int(path) if path else 0
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password is not None else None
        if self.password is None and self.username is not None:  # redis://secret@host
            self.password, self.username = self.username, None

    def endpoint(self, reactor: Any) -> IStreamClientEndpoint:
        host = self.host.replace(":", r"\:")
        kind = "tls" if self.tls else "tcp"
        return clientFromString(reactor, f"{kind}:host={host}:port={self.port}")

    def __str__(self) -> str:  # no password: this goes into logs
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"


class _Protocol(Protocol):
    """One connection: writes commands, hands replies to the commands in order."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.reader = hiredis.Reader(replyError=ReplyError)
        self.waiting: deque[Deferred[Any]] = deque()
        self.sent: deque[float] = deque()  # when each waiting command went out
        self.watch: IDelayedCall | None = None
        self.gone = False

    def connectionMade(self) -> None:
        self.link._made(self)

    def send(self, commands: list[tuple[Any, ...]]) -> list[Deferred[Any]]:
        """Write ``commands`` in one go (pipelined); a Deferred per reply."""
        self.transport.write(b"".join(hiredis.pack_command(c) for c in commands))
        out = [Deferred() for _ in commands]
        self.waiting.extend(out)
        self.sent.extend([self.link.reactor.seconds()] * len(out))
        if self.watch is None:
            self.watch = self.link.reactor.callLater(self.link.timeout, self._check)
        return out

    def _check(self) -> None:
        """The oldest unanswered command's deadline: one timer per connection,
        armed again for the next oldest, rather than a timer set and cancelled
        per command (with it went about a tenth of pushd's CPU per publish
        through Redis, in interleaved timed runs)."""
        self.watch = None
        if self.gone or not self.sent:
            return
        late = self.sent[0] + self.link.timeout - self.link.reactor.seconds()
        if late > 0:
            self.watch = self.link.reactor.callLater(late, self._check)
            return
        log.warn(
            "redis {link}: no answer in {t:g}s; reconnecting", link=self.link, t=self.link.timeout
        )
        self.abort()  # fails every waiting command with Unavailable

    def dataReceived(self, data: bytes) -> None:
        reader = self.reader
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                if self.gone:
                    return
                if (
                    self.link.pubsub and type(reply) is list and reply
                    and reply[0] in PUSH_KINDS
                ):
                    self.link.on_push(reply)
                elif self.waiting:
                    d = self.waiting.popleft()
                    self.sent.popleft()
                    if isinstance(reply, ReplyError):
                        d.errback(Failure(reply))
                    else:
                        d.callback(reply)
                else:
                    raise hiredis.ProtocolError(f"a reply nobody asked for: {reply!r}")
        except hiredis.ProtocolError as e:
            log.error("redis {link}: protocol error, reconnecting: {e}", link=self.link, e=e)
            self.abort()

    def abort(self) -> None:
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.gone = True
        if self.watch is not None and self.watch.active():
            self.watch.cancel()
        self.watch = None
        self.sent.clear()
        self.link._lost(self)  # first: a command issued by an errback below finds it down
        waiting, self.waiting = self.waiting, deque()
        for d in waiting:
            d.errback(Failure(Unavailable("the connection to Redis was lost")))


class Link:
    """One connection to Redis, made again whenever it is lost.

    ``on_ready(link)`` runs after each (re)connection's handshake (AUTH,
    SELECT, the server's ``run_id``) and may return a Deferred: the link
    counts as up only once it fired, so a subscriber link subscribes again
    before anyone relies on it. ``on_lost()`` runs when an up link goes
    down. ``run_id`` is the server's, read at every connection: a changed
    one means a different Redis (restarted or failed over).
    """

    def __init__(
        self,
        reactor: Any,
        url: RedisURL,
        *,
        timeout: float = 2.0,
        pubsub: bool = False,
        name: str = "redis",
        on_ready: Callable[[Link], Deferred[Any] | None] = lambda link: None,
        on_lost: Callable[[], None] = lambda: None,
        on_push: Callable[[list[Any]], None] = lambda reply: None,
        endpoint: IStreamClientEndpoint | None = None,
        max_delay: float = 2.0,
    ) -> None:
        self.reactor = reactor
        self.url = url
        self.timeout = timeout
        self.pubsub = pubsub
        self.name = name
        self.on_ready = on_ready
        self.on_lost = on_lost
        self.on_push = on_push
        self.endpoint = endpoint or url.endpoint(reactor)
        self.max_delay = max_delay
        self.run_id: bytes | None = None
        self.up = False
        self._proto: _Protocol | None = None
        self._running = False
        self._connecting: Deferred[Any] | None = None
        self._retry: IDelayedCall | None = None
        self._delay = 0.05
        self._waiters: list[Deferred[None]] = []
        self._attempt_timer: IDelayedCall | None = None

    def __str__(self) -> str:
        return f"{self.name} {self.url}"

    # -- life ------------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        self._connect()

    def stop(self) -> None:
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        if self._connecting is not None:
            self._connecting.cancel()
        if self._proto is not None:
            self._proto.abort()
        for d in self._take_waiters():
            d.errback(Failure(Unavailable("stopped")))

    def when_up(self) -> Deferred[None]:
        """Fires when the link is (next) up; fails only if it is stopped."""
        if self.up:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def _take_waiters(self) -> list[Deferred[None]]:
        waiters, self._waiters = self._waiters, []
        return waiters

    def _connect(self) -> None:
        self._retry = None
        if not self._running:
            return
        factory = Factory.forProtocol(lambda: _Protocol(self))  # type: ignore[arg-type]
        d = self._connecting = self.endpoint.connect(factory)
        # A connect that neither succeeds nor fails (a SYN lost) is given up too.
        timer = self._attempt_timer = self.reactor.callLater(self.timeout, d.cancel)

        def done(result: Any) -> None:
            self._connecting = None
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure):
                self._again()

        d.addBoth(done)

    def _again(self) -> None:
        if self._running and self._retry is None:
            self._retry = self.reactor.callLater(self._delay, self._connect)
            self._delay = min(self._delay * 2, self.max_delay)

    def _made(self, proto: _Protocol) -> None:
        self._proto = proto
        Deferred.fromCoroutine(self._handshake(proto)).addErrback(
            lambda f: self._handshake_failed(proto, f)
        )

    async def _handshake(self, proto: _Protocol) -> None:
        url = self.url
        if url.password is not None:
            auth = (url.username, url.password) if url.username else (url.password,)
            await self._call(proto, ("AUTH", *auth))
        if not self.pubsub:
            if url.db:
                await self._call(proto, ("SELECT", url.db))
            info = await self._call(proto, ("INFO", "server"))
            self.run_id = _run_id(info)
        if proto.gone:
            raise Unavailable("lost during the handshake")
        self.up = True
        try:
            await _maybe(self.on_ready(self))
        except Exception:
            self.up = False
            raise
        if proto.gone:
            return
        self._delay = 0.05
        log.info("redis {link}: connected", link=self)
        for d in self._take_waiters():
            d.callback(None)

    def _handshake_failed(self, proto: _Protocol, f: Failure) -> None:
        self.up = False
        if not proto.gone:
            log.warn("redis {link}: {e}; trying again", link=self, e=f.getErrorMessage())
            proto.abort()  # _lost schedules the next attempt

    def _lost(self, proto: _Protocol) -> None:
        if self._proto is proto:
            self._proto = None
        was_up, self.up = self.up, False
        if was_up:
            log.warn("redis {link}: connection lost; reconnecting", link=self)
            self.on_lost()
        self._again()

    # -- commands ----------------------------------------------------------------
    def execute(self, *args: Any, wait: bool = True) -> Deferred[Any]:
        """One command's reply; Unavailable when the link is not up within
        ``timeout`` or the reply does not come within ``timeout``."""
        return self.pipeline([args], wait)[0]

    def ready(self) -> Deferred[None]:
        """Fires once the link is up (at once if it is); Unavailable if it is
        not within ``timeout``."""
        if self.up and self._proto is not None and not self._proto.gone:
            return succeed(None)
        if not self._running:
            return fail(Unavailable(f"{self.url}: stopped"))
        return self._up_within()

    def pipeline(
        self, commands: list[tuple[Any, ...]], wait: bool = True
    ) -> list[Deferred[Any]]:
        """Several commands in one write; a Deferred for each reply, in order.

        ``wait=False``: fail at once rather than wait for a link that is down
        (a command that depends on the connection, such as one naming its
        server's run_id)."""
        proto = self._proto
        if proto is not None and self.up and not proto.gone:
            return proto.send(commands)
        if not self._running or not wait:
            return [fail(Unavailable(f"{self.url} is not connected")) for _ in commands]
        # Down: wait for the link, at most ``timeout`` (a blip is not an outage,
        # and a daemon's first requests may come before its first connection).
        outs: list[Deferred[Any]] = [Deferred() for _ in commands]

        def send(_: object) -> None:
            for reply, out in zip(self.pipeline(commands), outs, strict=True):
                reply.chainDeferred(out)

        def give_up(f: Failure) -> None:
            for out in outs:
                out.errback(f)

        self._up_within().addCallbacks(send, give_up)
        return outs

    def _up_within(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiters.append(d)

        def give_up() -> None:
            if d in self._waiters:
                self._waiters.remove(d)
                d.errback(Failure(Unavailable(f"{self.url} is not connected")))

        timer = self.reactor.callLater(self.timeout, give_up)

        def settled(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return d.addBoth(settled)

    def send(self, command: tuple[Any, ...]) -> None:
        """Write a command whose answer is not a reply (SUBSCRIBE, UNSUBSCRIBE:
        their confirmations go to ``on_push``); dropped while not up."""
        proto = self._proto
        if proto is not None and self.up:
            proto.transport.write(hiredis.pack_command(command))

    def _call(self, proto: _Protocol, command: tuple[Any, ...]) -> Deferred[Any]:
        """A command during the handshake (before the link counts as up)."""
        return proto.send([command])[0]


async def _maybe(result: Any) -> Any:
    if isinstance(result, Deferred):
        return await result
    return result


def _run_id(info: bytes) -> bytes:
    for line in info.splitlines():
        if line.startswith(b"run_id:"):
            return line[7:].strip()
    raise Unavailable("INFO server has no run_id")
