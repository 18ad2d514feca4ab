"""The daemon's own numbers, published every second on ``pushd.status``.

The status page (``GET /status``) subscribes to this channel with pushd.js,
so it is refreshed over pushd itself, on whatever transport the browser
gets. Counters are the :class:`~pushd.registry.Registry`'s and the broker's;
rates are per second over the last interval. The source's own messages are
left out of the published count and rate, and nothing is published while
no one is subscribed (so a plain poll of the channel sees nothing new).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

from pushd.broker.interface import Broker
from pushd.registry import TRANSPORTS, Registry
from pushd.sources.base import Periodic

CHANNEL = "pushd.status"
EVENT = "status"


class StatusSource(Periodic):
    """Publishes a snapshot of connections, rates and drops every ``interval`` seconds."""

    def __init__(
        self,
        broker: Broker,
        registry: Registry,
        clock: IReactorTime,
        interval: float = 1.0,
        channel: str = CHANNEL,
    ) -> None:
        super().__init__(broker, f"status:{channel}", clock, interval)
        self.registry = registry
        self.channel = channel
        self.sent = 0  # our own messages, not counted as published
        self._last: tuple[float, int, dict[str, int]] | None = None

    def snapshot(self) -> dict[str, Any]:
        """The numbers now, with rates since the previous snapshot."""
        now = self.clock.seconds()
        r = self.registry
        published = self.broker.stats.published - self.sent
        deliveries = {t: r.deliveries[t] for t in TRANSPORTS}
        rates: dict[str, Any] = {"published": 0.0, "deliveries": dict.fromkeys(TRANSPORTS, 0.0)}
        if self._last is not None:
            then, was_published, was_delivered = self._last
            elapsed = max(now - then, 1e-6)
            rates["published"] = round((published - was_published) / elapsed, 2)
            rates["deliveries"] = {
                t: round((deliveries[t] - was_delivered[t]) / elapsed, 2) for t in TRANSPORTS
            }
        self._last = (now, published, deliveries)
        return {
            "time": int(now * 1000),
            "connections": {t: r.count(t) for t in TRANSPORTS},
            "published": published,
            "deliveries": deliveries,
            "dropped": {t: r.dropped[t] for t in TRANSPORTS},
            "resets": {t: r.resets[t] for t in TRANSPORTS},
            "rates": rates,
        }

    def tick(self) -> None:
        data = self.snapshot()
        # Only while someone listens (a WebSocket, stream, SSE or held
        # long-poll): an idle daemon's history and counters stay untouched.
        if not self.broker.subscribers(self.channel):
            return
        self.sent += 1
        self.publish(self.channel, data, EVENT)
