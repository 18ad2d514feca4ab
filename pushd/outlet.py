"""Bytes from one subscription to one connection, with a bound on what waits.

An :class:`Outlet` is the only thing a streaming transport (SSE, NDJSON
stream, WebSocket) writes through. It is a push producer on its connection:
while the kernel and Twisted buffers have room, bytes go straight out; once
the connection pauses it, bytes wait in a list, and when more than ``limit``
bytes wait the connection is dropped. The client resumes from its cursor, so
nothing is lost, and one slow reader never holds memory without bound nor
delays any other subscriber.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from twisted.internet.interfaces import IPushProducer, ITransport
from zope.interface import implementer

from pushd import compat

if TYPE_CHECKING:
    from pushd.fanout import Flusher


@implementer(IPushProducer)
class Outlet:
    """Pre-framed bytes in, sent at the end of the turn or queued while the peer is slow.

    Bytes wait in ``queue`` until the :class:`Flusher` runs (without one,
    they are written at once). While the connection has paused the outlet,
    they stay there, counted in ``queued``; past ``limit`` bytes the
    connection is aborted and ``on_overflow`` runs once. ``sent`` counts
    the bytes handed to the connection.

    On a plain TCP connection with nothing buffered, bytes are sent on the
    socket directly (:func:`pushd.compat.send`), sparing the reactor a register
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
        self.sock = compat.socket_of(transport)
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
            self._send(data)
            return
        self.queue.append(data)
        if self.paused:
            self.queued += len(data)
            if self.queued > self.limit:
                self.overflow()
        elif not self.waiting:
            self.waiting = True
            self.flusher.add(self)  # type: ignore[union-attr]

    def write_now(self, data: bytes) -> None:
        """Send ``data`` at once (the flusher is running): behind anything
        waiting, in the same send; queued, and bounded, while paused."""
        if self.ended:
            return
        if self.paused:
            self.write(data)
        elif self.queue:
            self.queue.append(data)
            self.flush()
        else:
            self._send(data)

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
            self._send(data)

    def _send(self, data: bytes) -> None:
        self.sent += len(data)
        compat.send(self.transport, self.sock, data)

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
