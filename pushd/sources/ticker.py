"""The demo source: a counter on a channel every ``interval`` seconds.

It exists so that a newcomer who starts the daemon sees data at once, and so
that every transport can be tried against a channel that is always moving.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from pushd.broker.interface import Broker
from pushd.config import ConfigError
from pushd.sources.base import Settings, Source


class Ticker(Source):
    """Publishes ``{"n": N, "time": ms}`` or ``template`` with ``{n}`` filled in."""

    def __init__(
        self,
        broker: Broker,
        clock: IReactorTime,
        channel: str = "ticker",
        interval: float = 1.0,
        template: str | None = None,
    ) -> None:
        super().__init__(broker, f"ticker:{channel}")
        self.channel = channel
        self.interval = interval
        self.template = template
        self.count = 0
        self._clock = clock
        self._loop = LoopingCall(self.tick)
        self._loop.clock = clock

    def tick(self) -> None:
        self.count += 1
        data: Any
        if self.template is None:
            data = {"n": self.count, "time": int(self._clock.seconds() * 1000)}
        else:
            data = self.template.format(n=self.count)
        self.publish(self.channel, data)

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        if self._loop.running:
            self._loop.stop()
        super().stopService()


def from_config(table: dict[str, Any], broker: Broker, reactor: Any) -> Ticker:
    s = Settings(table)
    channel = s.channel(default="ticker")
    interval = s.number("interval", 1.0)
    if interval <= 0:
        raise ConfigError("[[source]] ticker: interval must be more than 0")
    template = s.get("template", str, None)
    if template is not None:
        try:
            template.format(n=0)
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"[[source]] ticker: template {template!r}: {e}") from None
    s.done()
    return Ticker(broker, reactor, channel, interval, template)
