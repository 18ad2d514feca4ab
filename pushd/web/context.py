"""What every route and transport is given: one :class:`Context` per daemon."""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IReactorTime

from pushd.auth import Tokens
from pushd.broker.interface import Broker
from pushd.config import Settings
from pushd.fanout import Flusher, Group
from pushd.rates import PublishRates
from pushd.registry import Registry
from pushd.web.clients import Clients, local_only


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
        self.clients = Clients(settings.trusted_proxies)
        # Asked before every subscription, publish and backend operation
        # (pushd.web.access): authorize(who, action, channel) raises a
        # PushdError to refuse. ``who`` is the HTTP request or the WebSocket
        # connection; actions are "subscribe", "publish", "manage" (GET or
        # DELETE of a channel) and "admin" (/metrics, /status). With no
        # [[auth.key]] tokens are not looked at (tokens is None).
        self.tokens: Tokens | None = None
        self.authorize: Callable[[object, str, str], None] = local_only(self.clients)
        if settings.auth.key:
            self.tokens = Tokens(settings.auth, clock)
            self.authorize = self.tokens.authorizer(self.clients)
        # [limits] publish_rate's buckets (pushd.web.access.publish); None: no limit
        rate = settings.limits.publish_rate
        self.publish_rates = PublishRates(rate, clock) if rate else None
        # (channel, wire format) -> the streams that share its frames
        self.groups: dict[tuple[str, str], Group] = {}

