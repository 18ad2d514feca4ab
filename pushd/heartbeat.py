"""One heartbeat timer per transport, not one per connection."""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall


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
