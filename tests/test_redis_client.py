"""Why the Redis broker has its own small client (pushd.broker.resp).

Each txredisapi test shows one defect listed in the Redis broker's issue, as
the installed release behaves against a real redis-server; the test after it
shows pushd's Link does not have it. If a txredisapi test starts failing, a
new release fixed that defect: the note in pushd/broker/resp.py should say so.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint

from pushd.broker.resp import Link, RedisURL, Unavailable
from tests.redis_server import RedisServer, free_port
from tests.test_broker_redis import raw, within


class Counting:
    """A client endpoint that counts connection attempts and can wait for the n-th."""

    def __init__(self, port: int) -> None:
        self.inner = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        self.attempts = 0
        self._waits: list[tuple[int, Deferred[None]]] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        self.attempts += 1
        for n, d in list(self._waits):
            if self.attempts >= n:
                self._waits.remove((n, d))
                reactor.callLater(0, d.callback, None)
        return self.inner.connect(factory)

    def attempt(self, n: int) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waits.append((n, d))
        return within(d)


def link(port: int, **kw: Any) -> Link:
    path = kw.pop("db", 0)
    made = Link(reactor, RedisURL(f"redis://127.0.0.1:{port}/{path}"), **kw)
    made.start()
    return made


# 1. the subscriber does not subscribe again after a reconnect ------------------------------


@pytest_twisted.ensureDeferred
async def test_txredisapi_subscriber_does_not_resubscribe_after_a_reconnect(
    redis: RedisServer,
) -> None:
    made: list[Deferred[None]] = [Deferred(), Deferred()]

    class Protocol(txredisapi.SubscriberProtocol):
        def connectionMade(self) -> Any:
            d = super().connectionMade()
            d.addCallback(lambda _: made.pop(0).callback(self) if made else None)
            return d

    factory = txredisapi.SubscriberFactory()
    factory.protocol = Protocol
    factory.initialDelay = factory.delay = 0.05
    first, second = made
    factory.startConnecting(TCP4ClientEndpoint(reactor, "127.0.0.1", redis.port))
    try:
        conn = await within(first)
        await conn.subscribe(["news"])
        assert await raw(redis, "PUBLISH", "news", "1") == 1
        await raw(redis, "CLIENT", "KILL", "TYPE", "pubsub")
        await within(second)  # reconnected...
        assert await raw(redis, "PUBLISH", "news", "2") == 0  # ...subscribed to nothing
    finally:
        factory.stopTrying()
        await factory.disconnect()


# (pushd: test_broker_redis.test_a_cut_pubsub_connection_is_resubscribed_and_filled)


# 2. one failed AUTH or SELECT stops reconnecting for good ---------------------------------


@pytest_twisted.ensureDeferred
async def test_txredisapi_stops_reconnecting_after_a_failed_select(redis: RedisServer) -> None:
    endpoint = Counting(redis.port)
    factory = txredisapi.RedisFactory(None, 99, 1)  # db 99: Redis has 16
    factory.initialDelay = factory.maxDelay = 0.01
    factory.startConnecting(endpoint)
    try:
        await within(factory.deferred)
        raise AssertionError("SELECT 99 succeeded")
    except ValueError as e:
        assert "could not set dbid" in str(e)
    # stopped for good: a transient error (Redis still LOADING...) would be final
    assert factory.stopped and endpoint.attempts == 1
    await factory.disconnect()


@pytest_twisted.ensureDeferred
async def test_link_keeps_trying_after_a_failed_select(redis: RedisServer) -> None:
    endpoint = Counting(redis.port)
    made = link(redis.port, db=99, timeout=1.0, endpoint=endpoint, max_delay=0.05)
    try:
        await endpoint.attempt(3)
        assert not made.up
    finally:
        made.stop()


# 3. a command issued while disconnected can wait forever ----------------------------------


@pytest_twisted.ensureDeferred
async def test_txredisapi_command_while_disconnected_waits_forever() -> None:
    endpoint = Counting(free_port())  # nothing listens
    factory = txredisapi.RedisFactory(None, None, 1, isLazy=True, replyTimeout=0.05)
    factory.initialDelay = factory.maxDelay = 0.02
    factory.startConnecting(endpoint)
    reply = factory.handler.get("x")
    reply.addErrback(lambda f: None)  # cancelled below
    try:
        await endpoint.attempt(6)  # ~0.1 s of failed attempts, past its replyTimeout
        assert not reply.called  # and nothing would ever answer it
    finally:
        await factory.disconnect()
        reply.cancel()


@pytest_twisted.ensureDeferred
async def test_link_command_while_disconnected_fails_within_its_timeout() -> None:
    made = link(free_port(), timeout=0.2, max_delay=0.05)
    try:
        start = reactor.seconds()
        try:
            await within(made.execute("GET", "x"), 5)
            raise AssertionError("answered without a server")
        except Unavailable:
            pass
        assert reactor.seconds() - start < 2
    finally:
        made.stop()


# 4. confirmations of a SUBSCRIBE naming several channels go to the wrong commands -----------


@pytest_twisted.ensureDeferred
async def test_txredisapi_multi_channel_subscribe_confirmations_are_mismatched(
    redis: RedisServer,
) -> None:
    factory = txredisapi.SubscriberFactory()
    factory.continueTrying = False
    factory.startConnecting(TCP4ClientEndpoint(reactor, "127.0.0.1", redis.port))
    try:
        await within(factory.deferred)
        conn = factory.pool[0]
        first = conn.subscribe(["a", "b"])
        second = conn.subscribe(["c"])
        assert await within(first) == ["subscribe", "a", 1]
        assert await within(second) == ["subscribe", "b", 2]  # c's command got b's answer
    finally:
        await factory.disconnect()


@pytest_twisted.ensureDeferred
async def test_link_matches_confirmations_by_channel_and_keeps_replies_in_step(
    redis: RedisServer,
) -> None:
    pushed: list[list[Any]] = []
    seen: Deferred[None] = Deferred()

    def on_push(reply: list[Any]) -> None:
        pushed.append(reply)
        if len(pushed) == 4:
            seen.callback(None)

    made = link(redis.port, pubsub=True, on_push=on_push)
    try:
        await within(made.when_up())
        made.send(("SUBSCRIBE", "a", "b"))
        made.send(("SUBSCRIBE", "c"))
        pong = made.execute("PING")
        assert await within(pong) == [b"pong", b""]
        assert await raw(redis, "PUBLISH", "b", "hi") == 1
        await within(seen)
        assert pushed == [
            [b"subscribe", b"a", 1], [b"subscribe", b"b", 2], [b"subscribe", b"c", 3],
            [b"message", b"b", b"hi"],
        ]
    finally:
        made.stop()


# 5. a command Redis does not answer --------------------------------------------------------


class _Wire:
    """A client endpoint whose connection is a StringTransport: the test plays Redis."""

    def __init__(self) -> None:
        self.proto: Any = None
        self.transport: Any = None

    def connect(self, factory: Any) -> Deferred[Any]:
        from twisted.internet.testing import StringTransport

        self.proto = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.transport.abortConnection = self._abort  # type: ignore[method-assign]
        self.proto.makeConnection(self.transport)
        return succeed(self.proto)

    def _abort(self) -> None:
        from twisted.internet.error import ConnectionAborted
        from twisted.python.failure import Failure

        self.proto.connectionLost(Failure(ConnectionAborted()))

    def answer(self, reply: bytes) -> None:
        self.transport.clear()
        self.proto.dataReceived(reply)


def test_link_fails_a_command_unanswered_for_its_timeout_and_reconnects() -> None:
    """Each command gets its whole ``timeout`` from when it was sent, even when
    an older one was answered meanwhile; the late one fails every command
    behind it (their replies would be out of step) and the link reconnects."""
    from twisted.internet.task import Clock
    from twisted.trial.unittest import SynchronousTestCase

    clock, wire = Clock(), _Wire()
    made = Link(clock, RedisURL("redis://127.0.0.1:1/0"), timeout=2.0, endpoint=wire)
    made.start()
    wire.answer(b"$15\r\nrun_id:abcdef\r\n\r\n")  # INFO server
    assert made.up
    t = SynchronousTestCase()
    first = made.execute("GET", "a")
    clock.advance(1.5)
    second, third = made.execute("GET", "b"), made.execute("GET", "c")
    wire.answer(b"$1\r\nA\r\n")
    assert t.successResultOf(first) == b"A"
    clock.advance(1.0)  # 2.5 s: the first's deadline is past, the others were sent at 1.5 s
    assert not second.called and made.up
    wire.answer(b"$1\r\nB\r\n")
    assert t.successResultOf(second) == b"B"
    clock.advance(0.99)
    assert not third.called
    clock.advance(0.02)  # 3.51 s: the third's 2 s are over
    t.failureResultOf(third, Unavailable)
    assert not made.up
    clock.advance(0.05)  # the reconnect's backoff
    assert wire.proto is not None and wire.transport.value().startswith(b"*2\r\n$4\r\nINFO")
    made.stop()
