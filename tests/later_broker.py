"""A broker that answers every call on a later reactor turn.

The memory broker answers at once; Redis (and anything over a network)
answers later. Transport code that quietly relies on the answer being there
already (a replay done before the call returns, a publish's id at hand) works
against the one and breaks against the other. The transport suites run
against both (``both_brokers`` marker, see ``tests/conftest.py``).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred

from pushd.broker.hub import LocalSubscription
from pushd.broker.memory import MemoryBroker


class LaterBroker(MemoryBroker):
    """The memory broker's answers, each given on the next reactor turn.

    ``subscribe`` joins the hub at once (live messages are held from then
    on) and replays on the next turn, as a Redis broker subscribes first and
    reads history after.
    """

    def _later(self, call: Callable[..., Deferred[Any]], *args: Any) -> Deferred[Any]:
        def cancel(d: Deferred[Any]) -> None:
            if delayed.active():
                delayed.cancel()

        answer: Deferred[Any] = Deferred(cancel)

        def run() -> None:
            call(*args).addBoth(lambda r: None if answer.called else answer.callback(r))

        delayed = self.clock.callLater(0, run)
        return answer

    def publish(self, *args: Any, **kw: Any) -> Deferred[Any]:
        return self._later(lambda: MemoryBroker.publish(self, *args, **kw))

    def publish_many(self, *args: Any, **kw: Any) -> Deferred[Any]:
        return self._later(lambda: MemoryBroker.publish_many(self, *args, **kw))

    def publish_keyed(self, *args: Any, **kw: Any) -> Deferred[Any]:
        return self._later(lambda: MemoryBroker.publish_keyed(self, *args, **kw))

    def read(self, *args: Any, **kw: Any) -> Deferred[Any]:
        return self._later(lambda: MemoryBroker.read(self, *args, **kw))

    def info(self, *args: Any, **kw: Any) -> Deferred[Any]:
        return self._later(lambda: MemoryBroker.info(self, *args, **kw))

    def delete(self, *args: Any, **kw: Any) -> Deferred[Any]:
        return self._later(lambda: MemoryBroker.delete(self, *args, **kw))

    def _replay(self, sub: LocalSubscription, since: str | None, now: int) -> None:
        self.clock.callLater(0, MemoryBroker._replay, self, sub, since, now)
