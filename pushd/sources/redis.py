"""``redis``: Redis pub/sub into channels, so any web app can push with PUBLISH.

The source subscribes to ``channels`` and/or ``patterns`` with txredisapi
and publishes each Redis message to a pushd channel named by ``channel``, a
template in which ``{channel}`` is the Redis channel's name (default
``"{channel}"``: the same name; ``"app.{channel}"`` adds a prefix).
``channel_map`` names exceptions exactly (Redis name → pushd name) and wins
over the template. A resulting name that is not a valid pushd channel name
is logged, counted in ``errors`` and skipped. Message bodies are UTF-8 text,
or JSON values with ``format = "json"`` (invalid ones skipped likewise).

Reconnecting is ours, not txredisapi's: each attempt is a fresh
``SubscriberFactory`` with ``reconnect = False``, so retries follow the same
backoff as every other source, on the clock passed in, and each new
connection subscribes again before it counts as up.
"""

from __future__ import annotations

from typing import Any

import txredisapi
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint

from pushd.broker.interface import Broker
from pushd.config import ConfigError
from pushd.model import CHANNEL_RE
from pushd.sources.base import Backoff, Restarting, Settings, decode_line


class _Protocol(txredisapi.SubscriberProtocol):
    factory: _Factory

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.factory.source.received(channel, message)


class _Factory(txredisapi.SubscriberFactory):
    """One connection attempt; bytes in, bytes out (no charset, no number guessing)."""

    protocol = _Protocol

    def __init__(self, source: RedisSource) -> None:
        super().__init__()
        self.source = source
        self.reconnect = False  # RedisSource retries, with its own backoff
        self.charset = None  # bodies are decoded by the source, which counts bad ones
        self.convertNumbers = False  # "007" stays "007"
        self.password = source.password


class RedisSource(Restarting):
    """Relays Redis pub/sub messages into pushd channels."""

    def __init__(
        self,
        broker: Broker,
        reactor: Any,
        endpoint: IStreamClientEndpoint,
        *,
        channels: list[str] = (),  # type: ignore[assignment]
        patterns: list[str] = (),  # type: ignore[assignment]
        template: str = "{channel}",
        channel_map: dict[str, str] | None = None,
        as_json: bool = False,
        password: str | None = None,
        description: str = "redis",
        backoff: Backoff | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        clock = clock or reactor
        super().__init__(broker, f"redis:{description}", clock, backoff or Backoff(clock))
        self.endpoint = endpoint
        self.description = description
        self.channels = list(channels)
        self.patterns = list(patterns)
        self.template = template
        self.channel_map = dict(channel_map or {})
        self.as_json = as_json
        self.password = password
        self._factory: _Factory | None = None

    def run(self) -> Deferred[str]:
        return Deferred.fromCoroutine(self._subscribe())

    async def _subscribe(self) -> str:
        factory = self._factory = _Factory(self)
        factory.startConnecting(self.endpoint)
        try:
            await factory.deferred
            conn = factory.pool[0]
            lost = conn.whenDisconnected()
            # One command per name, so each reply answers exactly its own command.
            for name in self.channels:
                await conn.subscribe([name])
            for pattern in self.patterns:
                await conn.psubscribe([pattern])
            what = ", ".join(self.channels + self.patterns)
            self.connected(f"subscribed to {what} on {self.description}")
            await lost
            return f"lost the connection to {self.description}"
        finally:
            self._factory = None
            await factory.disconnect()

    def halt(self) -> None:
        factory = self._factory
        if factory is None:
            return
        waiting, factory.deferred = factory.deferred, None
        factory.disconnect()  # closes a live connection: the session sees it lost
        if waiting is not None:
            waiting.cancel()  # still connecting: give up now

    def received(self, channel: bytes, body: bytes) -> None:
        try:
            name = channel.decode("utf-8")
        except UnicodeDecodeError:
            self.errors += 1
            self.log.warn("source {source}: skipped a message on a channel name that is "
                          "not UTF-8: {name!r}", source=self.name, name=channel[:200])
            return
        target = self.channel_map.get(name)
        if target is None:
            target = self.template.format(channel=name)
        if not CHANNEL_RE.match(target):
            self.errors += 1
            self.log.warn("source {source}: Redis channel {name!r} maps to {target!r}, "
                          "not a valid channel name; skipped", source=self.name,
                          name=name[:200], target=target[:200])
            return
        ok, data = decode_line(self, body, self.as_json)
        if ok:
            self.publish(target, data)


def from_config(table: dict[str, Any], broker: Broker, reactor: Any) -> RedisSource:
    s = Settings(table)
    description = s.get("endpoint", str, "tcp:host=127.0.0.1:port=6379")
    try:
        endpoint = clientFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(
            f"[[source]] redis: endpoint {description!r} is not usable: {e}"
        ) from None
    channels = s.strings("channels", [])
    patterns = s.strings("patterns", [])
    if not channels and not patterns:
        raise ConfigError("[[source]] redis: channels or patterns (or both) must name "
                          "at least one Redis channel")
    template = s.get("channel", str, "{channel}")
    try:
        example = template.format(channel="x")
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"[[source]] redis: channel {template!r}: {e}; "
                          "use {channel} for the Redis channel name") from None
    if not CHANNEL_RE.match(example):
        raise ConfigError(f"[[source]] redis: channel {template!r} does not make valid "
                          f"channel names (gives {example!r} for Redis channel 'x')")
    channel_map = s.string_table("channel_map")
    for name, target in channel_map.items():
        if not CHANNEL_RE.match(target):
            raise ConfigError(f"[[source]] redis: channel_map.{name} = {target!r} is not a "
                              "valid channel name")
    fmt = s.choice("format", ("text", "json"), "text")
    password = s.get("password", str, None)
    backoff = s.backoff(reactor)
    s.done()
    return RedisSource(
        broker, reactor, endpoint, channels=channels, patterns=patterns, template=template,
        channel_map=channel_map, as_json=fmt == "json", password=password,
        description=description, backoff=backoff,
    )
