"""What every route and transport is given: one :class:`Context` per daemon."""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IReactorTime

from pushd.broker.interface import Broker
from pushd.config import Settings
from pushd.fanout import Flusher, Group
from pushd.registry import Registry


class Context:
    """What a route needs: the broker, settings, clock and connection registry.

    One instance per daemon, built by ``pushd.tap``; nothing lives in globals.
    """

    def __init__(
        self,
        broker: Broker,
        settings: Settings,
        clock: IReactorTime,
        registry: Registry,
    ) -> None:
        self.broker = broker
        self.settings = settings
        self.clock = clock
        self.registry = registry
        self.flusher = Flusher(clock)  # one end-of-turn send per connection
        # Asked before every subscription and publish (pushd.web.access):
        # authorize(who, action, channel) raises a PushdError to refuse.
        # ``who`` is the HTTP request or the WebSocket connection.
        self.authorize: Callable[[object, str, str], None] = _anyone
        # (channel, wire format) -> the streams that share its frames
        self.groups: dict[tuple[str, str], Group] = {}


def _anyone(who: object, action: str, channel: str) -> None:
    """The authorization hook until keys are configured: everyone may."""
