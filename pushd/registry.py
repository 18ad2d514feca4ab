"""Open connections and per-transport counters, for ``/metrics`` and draining.

:class:`Registry` counts open subscriptions, deliveries, drops and resets per
transport; it also holds whether the daemon is ready or draining.
"""

from __future__ import annotations

from typing import Callable, Iterable

TRANSPORTS = ("poll", "longpoll", "stream", "sse", "ws")


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
        self.available: Callable[[], bool] = lambda: True  # the broker's store (Redis) is up

    @property
    def ready(self) -> bool:
        """What ``/readyz`` answers: up, not draining, and the broker's store reachable."""
        return self.started and not self.draining and self.available()

    @property
    def readiness(self) -> str:
        """``/readyz``'s status word, the same on the main and the ops listener:
        ``ready``, else why not (``starting``, ``draining``, ``unavailable``:
        the broker cannot reach its store)."""
        if self.ready:
            return "ready"
        if self.draining:
            return "draining"
        return "starting" if not self.started else "unavailable"

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
