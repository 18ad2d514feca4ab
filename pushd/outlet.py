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

from typing import Callable, Iterable, Protocol

from twisted.internet.interfaces import IPushProducer, IReactorTime, ITransport
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from pushd import fastwrite

TRANSPORTS = ("poll", "longpoll", "stream", "sse", "ws")


@implementer(IPushProducer)
class Outlet:
    """Pre-framed bytes in, written now or queued while the peer is slow.

    ``on_overflow`` runs once when the queue passes ``limit``; the outlet has
    already aborted the connection by then.

    On a plain TCP connection with nothing buffered, bytes are sent on the
    socket at once (:mod:`pushd.fastwrite`), sparing the reactor a register
    and an unregister for writing per message.
    """

    __slots__ = (
        "__weakref__",
        "ended",
        "limit",
        "on_overflow",
        "paused",
        "queue",
        "queued",
        "sent",
        "sock",
        "transport",
    )

    def __init__(
        self,
        transport: ITransport,
        limit: int,
        on_overflow: Callable[[], None] = lambda: None,
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

    def write(self, data: bytes) -> None:
        if self.ended:
            return
        self.sent += len(data)
        if not self.paused:
            fastwrite.write(self.transport, self.sock, data)
            return
        self.queue.append(data)
        self.queued += len(data)
        if self.queued > self.limit:
            self.overflow()

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
        """Hand every queued byte to the connection, paused or not.

        For a clean end: the queue is bounded, and the connection's own
        buffer sends it before the connection closes.
        """
        if self.queue and not self.ended:
            queue, self.queue, self.queued = self.queue, [], 0
            # one send() for everything that waited
            fastwrite.write(self.transport, self.sock, b"".join(queue))

    def end(self) -> None:
        """Write nothing more; queued bytes are discarded."""
        self.ended = True
        self.queue = []
        self.queued = 0

    # IPushProducer, driven by the connection
    def pauseProducing(self) -> None:
        self.paused = True

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

    def all(self) -> Iterable[tuple[str, object]]:
        for transport, conns in self.connections.items():
            for conn in tuple(conns):
                yield transport, conn
