"""pushd.compat's direct send and the Outlet's use of it, over real loopback connections.

Each test asserts what the reactor is asked to do (is the transport
registered for writing?) and what the peer receives, never how long
anything took.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport

from pushd import compat
from pushd.fanout import Flusher, Group
from pushd.outlet import Outlet


class Sink(Protocol):
    """The client side: collects bytes, fires ``until`` once it has ``want`` bytes."""

    def __init__(self) -> None:
        self.data = b""
        self.want = -1
        self.until: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.want >= 0 and len(self.data) >= self.want and not self.until.called:
            self.until.callback(self.data)

    def expect(self, n: int) -> Deferred[bytes]:
        self.want = n
        if len(self.data) >= n and not self.until.called:
            self.until.callback(self.data)
        return self.until


class Held(Protocol):
    """The server side: tells the test its transport once connected."""

    def __init__(self, made: Deferred[Any]) -> None:
        self.made = made

    def connectionMade(self) -> None:
        self.made.callback(self.transport)


async def pair() -> tuple[Any, Sink, Any]:
    """(server transport, client protocol, listening port) over 127.0.0.1."""
    connected: Deferred[Any] = Deferred()
    port = reactor.listenTCP(0, Factory.forProtocol(lambda: Held(connected)),
                             interface="127.0.0.1")
    sink = Sink()
    client_made: Deferred[None] = Deferred()

    class Client(ClientFactory):
        def buildProtocol(self, addr: Any) -> Sink:
            reactor.callLater(0, client_made.callback, None)
            return sink

    reactor.connectTCP("127.0.0.1", port.getHost().port, Client())
    transport = await connected
    await client_made
    return transport, sink, port


async def close(transport: Any, sink: Sink, port: Any) -> None:
    transport.abortConnection()
    if sink.transport is not None:
        sink.transport.abortConnection()
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_idle_connection_sends_at_once_without_epoll_registration() -> None:
    transport, sink, port = await pair()
    try:
        sock = compat.socket_of(transport)
        assert sock is transport.socket
        assert transport not in reactor.getWriters()
        sent = compat.send(transport, sock, b"data: hello\n\n")
        assert sent == len(b"data: hello\n\n")
        # nothing buffered, and the reactor was never asked to watch for writing
        assert transport not in reactor.getWriters()
        assert not transport._tempDataLen and not transport.dataBuffer
        assert await sink.expect(13) == b"data: hello\n\n"
    finally:
        await close(transport, sink, port)


@pytest_twisted.ensureDeferred
async def test_partial_send_buffers_the_rest_in_order() -> None:
    transport, sink, port = await pair()
    try:
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sink.transport.pauseProducing()  # the client stops reading
        big = bytes(range(256)) * (16 * 1024)  # 4 MiB: more than the kernel takes
        sock = compat.socket_of(transport)
        sent = compat.send(transport, sock, big)
        assert 0 < sent < len(big)
        assert transport._tempDataLen == len(big) - sent
        assert transport in reactor.getWriters()
        # the buffer is not empty now, so this goes behind it, not around it
        assert compat.send(transport, sock, b"tail") == 0
        assert transport._tempDataLen == len(big) - sent + 4
        sink.transport.resumeProducing()
        got = await sink.expect(len(big) + 4)
        assert got == big + b"tail"
        await deferLater(reactor, 0, lambda: None)
        assert transport not in reactor.getWriters()
    finally:
        await close(transport, sink, port)


@pytest_twisted.ensureDeferred
async def test_failed_send_falls_back_to_transport_write() -> None:
    transport, sink, port = await pair()
    try:
        transport.socket.shutdown(socket.SHUT_WR)  # send() now fails with EPIPE
        sock = compat.socket_of(transport)
        assert compat.send(transport, sock, b"late") == 0
        assert transport._tempDataLen == 4  # Twisted finds the error on its own write
    finally:
        await close(transport, sink, port)


@pytest_twisted.ensureDeferred
async def test_write_after_the_connection_is_gone_is_dropped_quietly() -> None:
    transport, sink, port = await pair()
    sock = compat.socket_of(transport)
    lost: Deferred[None] = Deferred()
    transport.protocol.connectionLost = lambda reason: lost.callback(None)
    sink.transport.abortConnection()  # the peer goes away
    await lost
    assert not transport.connected and not transport.disconnecting
    # the socket is closed now: send() fails and the transport drops the bytes
    assert compat.send(transport, sock, b"late") == 0
    assert not transport._tempDataLen and not transport.dataBuffer
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_tls_transport_goes_through_transport_write() -> None:
    transport, sink, port = await pair()
    try:
        transport.TLS = True  # what startTLS sets: bytes must go through TLS
        written: list[bytes] = []
        transport.write = written.append  # stands in for the TLS layer
        assert compat.socket_of(transport) is None
        # even given the socket, a TLS connection is never written around
        assert compat.send(transport, transport.socket, b"x") == 0
        assert written == [b"x"]
    finally:
        transport.TLS = False
        del transport.write
        await close(transport, sink, port)


def test_non_tcp_transport_uses_transport_write() -> None:
    t = StringTransport()
    assert compat.socket_of(t) is None
    assert compat.send(t, None, b"abc") == 0
    assert t.value() == b"abc"


def test_outlet_on_a_string_transport_keeps_its_semantics() -> None:
    t = StringTransport()
    dropped = []
    outlet = Outlet(t, limit=10, on_overflow=lambda: dropped.append(1))
    outlet.write(b"one")
    assert t.value() == b"one"
    outlet.pauseProducing()
    outlet.write(b"two")
    outlet.write(b"three")
    assert t.value() == b"one"
    outlet.resumeProducing()  # everything that waited, in one write
    assert t.value() == b"onetwothree"
    outlet.pauseProducing()
    outlet.write(b"x" * 11)
    assert dropped == [1] and t.disconnecting


@pytest_twisted.ensureDeferred
async def test_outlet_writes_directly_when_idle_and_queues_when_paused() -> None:
    transport, sink, port = await pair()
    try:
        outlet = Outlet(transport, limit=1 << 20)
        transport.registerProducer(outlet, True)
        outlet.write(b"a1")
        assert transport not in reactor.getWriters()
        outlet.pauseProducing()
        outlet.write(b"b2")
        outlet.write(b"c3")
        assert outlet.queued == 4
        outlet.resumeProducing()
        assert await sink.expect(6) == b"a1b2c3"
        assert outlet.sent == 6
        transport.unregisterProducer()
    finally:
        await close(transport, sink, port)


# -- the end-of-turn flush ----------------------------------------------------
class CountingTransport(StringTransport):
    """Counts the writes an outlet makes: one per send it asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


def test_writes_in_one_turn_leave_in_one_write_at_its_end() -> None:
    from twisted.internet.task import Clock

    from pushd.fanout import Flusher

    clock = Clock()
    flusher = Flusher(clock)
    transports = [CountingTransport() for _ in range(3)]
    outlets = [Outlet(t, 1024, flusher=flusher) for t in transports]
    for message in (b"one\n", b"two\n", b"three\n"):
        for outlet in outlets:
            outlet.write(message)
    assert [t.writes for t in transports] == [0, 0, 0]
    assert len(clock.getDelayedCalls()) == 1  # one timer for every outlet
    clock.advance(0)
    assert [t.writes for t in transports] == [1, 1, 1]
    assert {t.value() for t in transports} == {b"one\ntwo\nthree\n"}


def test_a_fan_out_is_sent_a_slice_per_turn_and_late_messages_join_it() -> None:
    """A message published half-way through a fan-out rides along with it.

    Connections not yet reached send both messages in one write; those
    already served get the new one on the next pass, so none waits for
    more than one pass over the others.
    """
    from twisted.internet.task import Clock

    from pushd.fanout import Flusher

    def turn() -> None:
        """One reactor turn: what is due now runs; what it schedules waits for the next."""
        due = [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]
        for call in due:
            func, args, kw = call.func, call.args, call.kw
            call.cancel()
            func(*args, **kw)

    clock = Clock()
    flusher = Flusher(clock, per_turn=2)
    transports = [CountingTransport() for _ in range(5)]
    outlets = [Outlet(t, 1024, flusher=flusher) for t in transports]
    for outlet in outlets:
        outlet.write(b"1\n")
    turn()  # one slice: the first two connections
    assert [t.value() for t in transports] == [b"1\n"] * 2 + [b""] * 3
    for outlet in outlets:  # the next publish lands between two slices
        outlet.write(b"2\n")
    turn()
    assert [t.value() for t in transports] == [b"1\n"] * 2 + [b"1\n2\n"] * 2 + [b""]
    turn()  # the last one of the first pass, then the first one of the second
    assert [t.value() for t in transports] == [b"1\n2\n", b"1\n"] + [b"1\n2\n"] * 3
    assert [t.writes for t in transports] == [2, 1, 1, 1, 1]  # the last three: one write each
    turn()
    assert [t.value() for t in transports] == [b"1\n2\n"] * 5
    assert [t.writes for t in transports] == [2, 2, 1, 1, 1]
    assert clock.getDelayedCalls() == []  # nothing left: the timer stops


def test_a_paused_outlet_keeps_its_bytes_past_the_turn_and_is_bounded() -> None:
    from twisted.internet.task import Clock

    from pushd.fanout import Flusher

    clock = Clock()
    transport = CountingTransport()
    dropped = []
    outlet = Outlet(transport, 10, lambda: dropped.append(1), Flusher(clock))
    outlet.write(b"abc")
    outlet.pauseProducing()
    clock.advance(0)
    assert transport.value() == b""  # paused: nothing goes out at the end of the turn
    outlet.write(b"defg")
    outlet.resumeProducing()
    assert transport.value() == b"abcdefg"
    outlet.pauseProducing()
    outlet.write(b"x" * 11)
    assert dropped == [1] and outlet.ended
    clock.advance(0)
    assert transport.value() == b"abcdefg"


def test_flush_sends_what_the_turn_holds_before_a_clean_end() -> None:
    from twisted.internet.task import Clock

    from pushd.fanout import Flusher

    clock = Clock()
    transport = CountingTransport()
    outlet = Outlet(transport, 1024, flusher=Flusher(clock))
    outlet.write(b"last words")
    outlet.flush()
    assert transport.value() == b"last words"
    clock.advance(0)
    assert transport.writes == 1


class Plain:
    """A group member without a byte budget: the sweep writes to its outlet itself."""

    max_bytes = 0

    def __init__(self, outlet: Outlet) -> None:
        self.pos = 0
        self.direct: Outlet | None = outlet

    def pulled(self, data: bytes, count: int) -> None:
        raise AssertionError("a plain member is written to by the sweep")


@pytest_twisted.ensureDeferred
async def test_a_group_sweep_sends_on_an_idle_socket_and_keeps_order_after_a_partial_send() -> None:
    """Group.sweep repeats compat.send's idle check inline: same outcome on the wire."""
    transport, sink, port = await pair()
    try:
        clock = Clock()
        flusher = Flusher(clock)
        counts = {"sse": 0}
        group = Group(lambda m: m, flusher, lambda g: None, counts, "sse")  # type: ignore[arg-type,return-value]
        outlet = Outlet(transport, 64 * 1024 * 1024, flusher=flusher)
        group.join(Plain(outlet))  # type: ignore[arg-type]

        group.deliver(b"one ")  # type: ignore[arg-type]
        clock.advance(0)
        assert transport not in reactor.getWriters()  # sent on the socket, not buffered
        assert not transport._tempDataLen and not transport.dataBuffer
        assert await sink.expect(4) == b"one "

        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sink.transport.pauseProducing()  # the client stops reading
        big = bytes(range(256)) * (16 * 1024)  # 4 MiB: more than the kernel takes
        group.deliver(big)  # type: ignore[arg-type]
        clock.advance(0)
        assert 0 < transport._tempDataLen < len(big)  # the rest waits in Twisted
        assert transport in reactor.getWriters()
        group.deliver(b"tail")  # type: ignore[arg-type]
        clock.advance(0)  # behind what waits, not around it
        sink.transport.resumeProducing()
        sink.until = Deferred()  # expect() fires once
        assert await sink.expect(8 + len(big)) == b"one " + big + b"tail"
        assert counts["sse"] == 3
        assert outlet.sent == 8 + len(big)
    finally:
        await close(transport, sink, port)


def test_self_check_finds_every_private_attribute_on_this_install() -> None:
    assert compat.self_check() == []
    assert compat.DIRECT_SEND


@pytest_twisted.ensureDeferred
async def test_without_direct_send_every_byte_goes_through_twisted(
    start_daemon: Any, monkeypatch: Any
) -> None:
    """What a daemon does when self_check found a private attribute gone:
    no outlet gets a socket, and streams still get every message, in order."""
    from tests.clients import RawHTTP, dechunk, get_request, split_response
    from tests.clients import subscribed as until_subscribed

    monkeypatch.setattr(compat, "DIRECT_SEND", False)
    running = start_daemon()
    raw = await RawHTTP.open(running.port, get_request("/channels/f/events"))
    await until_subscribed(running.broker, "f")
    (streamer,) = running.registry.connections["sse"]
    assert streamer.outlet.sock is None
    for i in range(20):
        await running.broker.publish("f", str(i))
    await raw.contains(b"data: 19\n")
    body = b"".join(dechunk(split_response(raw.data)[2])[0])
    assert [line for line in body.split(b"\n") if line.startswith(b"data:")] == [
        b"data: %d" % i for i in range(20)
    ]
    raw.close()
