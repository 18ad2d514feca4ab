"""The demo source: a counter on a channel every ``interval`` seconds.

It exists so that a newcomer who starts the daemon sees data at once, and so
that every transport can be tried against a channel that is always moving.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

from pushd.broker.interface import Broker
from pushd.config import ConfigError
from pushd.sources.base import Periodic, Settings


class Ticker(Periodic):
    """Publishes ``{"n": N, "time": ms}`` or ``template`` with ``{n}`` filled in."""

    tick_at_start = False

    def __init__(
        self,
        broker: Broker,
        clock: IReactorTime,
        channel: str = "ticker",
        interval: float = 1.0,
        template: str | None = None,
    ) -> None:
        super().__init__(broker, f"ticker:{channel}", clock, interval)
        self.channel = channel
        self.template = template
        self.count = 0

    def tick(self) -> None:
        self.count += 1
        data: Any
        if self.template is None:
            data = {"n": self.count, "time": int(self.clock.seconds() * 1000)}
        else:
            data = self.template.format(n=self.count)
        self.publish(self.channel, data)


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
