"""Bytes from one subscription to one connection, with a bound on what waits.

An :class:`Outlet` is the only thing a streaming transport (SSE, NDJSON
stream, WebSocket) writes through. It is a push producer on its connection:
while the kernel and Twisted buffers have room, bytes go straight out; once
the connection pauses it, bytes wait in a list, and when more than ``limit``
bytes wait the connection is dropped. The client resumes from its cursor, so
nothing is lost, and one slow reader never holds memory without bound nor
delays any other subscriber.

:class:`Registry` counts open outlets, deliveries, drops and resets per
transport, for ``/metrics`` and for draining, and runs one heartbeat timer
per transport instead of one per connection.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterable, Protocol

from twisted.internet.interfaces import IPushProducer, IReactorTime, ITransport
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from pushd import fastwrite

TRANSPORTS = ("poll", "longpoll", "stream", "sse", "ws")


class Flusher:
    """Sends what outlets were given, a slice of connections per reactor turn.

    A publish fans out to every subscriber at once, and several publishes
    can land in the same turn (pipelined requests, a batch). Outlets hold
    what they are given until the flusher reaches them, then each makes one
    ``send()`` for all of it: one system call per connection per visit
    instead of one per message, the way a cork works. One timer serves
    every outlet.

    Outlets wait in one first-in, first-out line, and each turn sends for
    at most ``per_turn`` of them before the reactor reads again. Sending to
    a thousand sockets takes longer than the gap between two messages at
    high rates; done in one go, the next publish would wait for the whole
    fan-out and then start its own from the first socket. Done in slices,
    the next publish is read between two slices: outlets not yet reached
    carry both messages in one send, and those already served rejoin the
    end of the line. No connection waits for more than one pass over the
    others, and new connections and publishes are served meanwhile.
    """

    def __init__(self, clock: IReactorTime, per_turn: int = 64) -> None:
        self.clock = clock
        self.per_turn = per_turn
        self.waiting: deque[Outlet] = deque()
        self.scheduled = False

    def add(self, outlet: Outlet) -> None:
        self.waiting.append(outlet)
        if not self.scheduled:
            self.scheduled = True
            self.clock.callLater(0, self.run)

    def run(self) -> None:
        waiting = self.waiting
        take = waiting.popleft
        for _ in range(min(self.per_turn, len(waiting))):
            outlet = take()
            outlet.waiting = False
            # send what waited, unless the peer paused us
            if not outlet.paused:
                outlet.flush()
        if waiting:
            self.clock.callLater(0, self.run)
        else:
            self.scheduled = False


@implementer(IPushProducer)
class Outlet:
    """Pre-framed bytes in, sent at the end of the turn or queued while the peer is slow.

    Bytes wait in ``queue`` until the :class:`Flusher` runs (without one,
    they are written at once). While the connection has paused the outlet,
    they stay there, counted in ``queued``; past ``limit`` bytes the
    connection is aborted and ``on_overflow`` runs once. ``sent`` counts
    the bytes handed to the connection.

    On a plain TCP connection with nothing buffered, bytes are sent on the
    socket directly (:mod:`pushd.fastwrite`), sparing the reactor a register
    and an unregister for writing per send.
    """

    __slots__ = (
        "__weakref__",
        "ended",
        "flusher",
        "limit",
        "on_overflow",
        "paused",
        "queue",
        "queued",
        "sent",
        "sock",
        "transport",
        "waiting",
    )

    def __init__(
        self,
        transport: ITransport,
        limit: int,
        on_overflow: Callable[[], None] = lambda: None,
        flusher: Flusher | None = None,
    ) -> None:
        self.transport = transport
        self.sock = fastwrite.socket_of(transport)
        self.limit = limit
        self.paused = False
        self.queue: list[bytes] = []
        self.queued = 0
        self.sent = 0
        self.ended = False
        self.on_overflow = on_overflow
        self.flusher = flusher
        self.waiting = False

    def write(self, data: bytes) -> None:
        # Runs once per delivery: only the paused path counts bytes here;
        # otherwise they are counted once per send, when they leave.
        if self.ended:
            return
        if self.flusher is None and not self.paused:
            self.sent += len(data)
            fastwrite.write(self.transport, self.sock, data)
            return
        self.queue.append(data)
        if self.paused:
            self.queued += len(data)
            if self.queued > self.limit:
                self.overflow()
        elif not self.waiting:
            self.waiting = True
            self.flusher.add(self)  # type: ignore[union-attr]

    def overflow(self) -> None:
        """Drop the connection now: its client is too far behind."""
        self.end()
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            self.transport.loseConnection()
        self.on_overflow()

    def flush(self) -> None:
        """Hand every waiting byte to the connection now, paused or not.

        The Flusher and ``resumeProducing`` call it; so does a clean end, so
        that nothing given before the end is lost (the queue is bounded, and
        the connection's own buffer sends it before it closes).
        """
        queue = self.queue
        if queue and not self.ended:
            # one send() for everything that waited
            data = queue[0] if len(queue) == 1 else b"".join(queue)
            queue.clear()
            self.queued = 0
            self.sent += len(data)
            fastwrite.write(self.transport, self.sock, data)

    def end(self) -> None:
        """Write nothing more; queued bytes are discarded."""
        self.ended = True
        self.queue.clear()
        self.queued = 0

    # IPushProducer, driven by the connection
    def pauseProducing(self) -> None:
        self.paused = True
        # from now on every byte that waits counts against the limit
        self.queued = sum(map(len, self.queue))

    def resumeProducing(self) -> None:
        self.paused = False
        # Everything that waited leaves in one write: one send() for many.
        self.flush()

    def stopProducing(self) -> None:
        self.end()


class Beating(Protocol):
    def heartbeat(self) -> None:
        """Write this connection's keep-alive bytes."""


class Heartbeat:
    """One timer for every connection of a transport, not one per connection.

    Each member's ``heartbeat()`` writes its own bytes (a gzip stream must
    compress them), but they all share the reactor's single call.
    """

    def __init__(self, clock: IReactorTime, interval: float) -> None:
        self.members: set[Beating] = set()
        self.interval = interval
        self._loop = LoopingCall(self.beat)
        self._loop.clock = clock

    def add(self, member: Beating) -> None:
        self.members.add(member)
        if not self._loop.running:
            self._loop.start(self.interval, now=False)

    def discard(self, member: Beating) -> None:
        self.members.discard(member)
        if not self.members and self._loop.running:
            self._loop.stop()

    def beat(self) -> None:
        for member in tuple(self.members):
            member.heartbeat()

    def stop(self) -> None:
        self.members.clear()
        if self._loop.running:
            self._loop.stop()


class Registry:
    """Per-transport counters and the open connections a drain must end.

    ``connections`` holds objects with an ``end_politely()`` method; the
    transports add and remove themselves.
    """

    def __init__(self) -> None:
        self.connections: dict[str, set[object]] = {t: set() for t in TRANSPORTS}
        self.deliveries = dict.fromkeys(TRANSPORTS, 0)
        self.dropped = dict.fromkeys(TRANSPORTS, 0)
        self.resets = dict.fromkeys(TRANSPORTS, 0)
        self.bytes_sent = dict.fromkeys(TRANSPORTS, 0)
        self.draining = False
        self.started = False  # set once every listener is up

    @property
    def ready(self) -> bool:
        """What ``/readyz`` answers: up, and not draining."""
        return self.started and not self.draining

    def opened(self, transport: str, conn: object) -> None:
        self.connections[transport].add(conn)

    def closed(self, transport: str, conn: object) -> None:
        self.connections[transport].discard(conn)

    def count(self, transport: str) -> int:
        return len(self.connections[transport])

    def bytes_sent_now(self) -> dict[str, int]:
        """Bytes written per transport: ended connections' plus the open ones' so far.

        Read at scrape time rather than counted per write, so the delivery
        path pays nothing for it.
        """
        out = dict(self.bytes_sent)
        for transport, conns in self.connections.items():
            for conn in conns:
                outlet = getattr(conn, "outlet", None)
                if outlet is not None:
                    out[transport] += outlet.sent
        return out

    def all(self) -> Iterable[tuple[str, object]]:
        for transport, conns in self.connections.items():
            for conn in tuple(conns):
                yield transport, conn
