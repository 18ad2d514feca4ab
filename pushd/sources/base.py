"""What every source shares: config checking, counters, publishing."""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from pushd.broker.interface import Broker
from pushd.config import ConfigError
from pushd.model import CHANNEL_RE, Message


class Settings:
    """Typed access to one ``[[source]]`` table, with errors that name the key.

    Every key a source reads is recorded; :meth:`done` then refuses the rest,
    so a misspelt option stops the daemon instead of being ignored.
    """

    def __init__(self, table: dict[str, Any]) -> None:
        self.table = table
        self.kind = str(table.get("type"))
        self._read = {"type"}

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        self._read.add(key)
        if key not in self.table:
            if default is ...:
                raise ConfigError(f"[[source]] {self.kind}: {key} is required")
            return default
        value = self.table[key]
        ok = isinstance(value, kind) and not (
            isinstance(value, bool) and bool not in _tuple(kind)
        )
        if not ok:
            raise ConfigError(
                f"[[source]] {self.kind}: {key} has the wrong type: {value!r}"
            )
        return value

    def number(self, key: str, default: float, minimum: float = 0.0) -> float:
        value = float(self.get(key, (int, float), default))
        if value < minimum:
            raise ConfigError(f"[[source]] {self.kind}: {key} must be at least {minimum}")
        return value

    def channel(self, key: str = "channel", default: Any = ...) -> str:
        value = self.get(key, str, default)
        if not CHANNEL_RE.match(value):
            raise ConfigError(f"[[source]] {self.kind}: {key} {value!r} is not a valid channel name")
        return str(value)

    def done(self) -> None:
        extra = sorted(set(self.table) - self._read)
        if extra:
            raise ConfigError(f"[[source]] {self.kind}: unknown setting {extra[0]!r}")


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


class Source(Service):
    """A service that publishes to the broker and counts what happened.

    ``published``, ``errors`` and ``restarts`` are read by the metrics
    exporter; a source only increments them.
    """

    log = Logger()

    def __init__(self, broker: Broker, name: str) -> None:
        self.broker = broker
        self.setName(name)
        self.published = 0
        self.errors = 0
        self.restarts = 0

    def publish(self, channel: str, data: Any, event: str = "message") -> Deferred[Message]:
        d = self.broker.publish(channel, data, event)
        d.addCallbacks(self._published, self._failed, errbackArgs=(channel,))
        return d

    def _published(self, message: Message) -> Message:
        self.published += 1
        return message

    def _failed(self, failure: Any, channel: str) -> None:
        self.errors += 1
        self.log.warn(
            "source {source} could not publish to {channel}: {why}",
            source=self.name, channel=channel, why=failure.getErrorMessage(),
        )


Factory = Callable[[dict[str, Any], Broker, Any], Source]
