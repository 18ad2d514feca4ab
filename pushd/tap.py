"""``twistd pushd``: command line, settings and the service tree.

This is the one module that resolves the global reactor and wires every
layer: broker, then sources (which publish into it), then the web site
(which reads from it), each a child of one MultiService. Nothing listens or
runs before ``startService``.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.python import usage

from pushd import config, sources
from pushd.broker.memory import MemoryBroker
from pushd.config import ConfigError, Settings
from pushd.outlet import Registry
from pushd.web.app import PushdApp
from pushd.web.common import Context


def _number(options: usage.Options, name: str, kind: type) -> Any:
    """A numeric option, or a ConfigError naming it (one line, not the usage)."""
    text = options[name]
    if text is None:
        return None
    try:
        value = kind(text)
    except ValueError:
        raise ConfigError(f"--{name} must be a number, not {text!r}") from None
    if value < 0:
        raise ConfigError(f"--{name} must not be negative")
    return value


class Options(usage.Options):
    synopsis = "[--config FILE] [--listen ENDPOINT ...]"
    longdesc = (
        "Serve channels over poll, long-poll, HTTP streaming, Server-Sent Events "
        "and WebSocket from one process. Settings come from the TOML file, and "
        "the options below override it."
    )
    optParameters = [
        ["config", "c", None, "TOML settings file (see etc/pushd.toml)."],
        ["history-size", None, None, "Messages kept per channel (default 1000)."],
        ["history-ttl", None, None, "Seconds a message is kept (default 3600)."],
        ["max-message-size", None, None, "Largest accepted message, bytes (default 65536)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self.settings = Settings()

    def opt_listen(self, endpoint: str) -> None:
        """Listen on this Twisted endpoint (repeatable; default
        tcp:8080:interface=127.0.0.1)."""
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        try:
            self.settings = self._settings()
        except ConfigError as e:
            raise SystemExit(f"pushd: {e}") from None

    def _settings(self) -> Settings:
        settings = config.load(self["config"]) if self["config"] else Settings()
        if self["listen"]:
            settings.listen = list(self["listen"])
        history = {}
        size = _number(self, "history-size", int)
        if size is not None:
            history["size"] = size
        ttl = _number(self, "history-ttl", float)
        if ttl is not None:
            history["ttl"] = ttl
        config.replace(settings, "history", **history)
        message_size = _number(self, "max-message-size", int)
        if message_size is not None:
            config.replace(settings, "limits", message_size=message_size)
        config.check(settings)
        from twisted.internet import reactor

        for endpoint in settings.listen:
            try:
                serverFromString(reactor, endpoint)
            except (ValueError, TypeError, KeyError) as e:
                raise ConfigError(f"listen endpoint {endpoint!r} is not usable: {e}") from None
        return settings


class Listener(Service):
    """One endpoint string listening with the site.

    Like ``strports.service``, but it keeps the listening port and a
    Deferred that fires once it is up, which readiness (``/readyz``,
    systemd's ``READY=1``) and tests (the port of ``tcp:0``) need.
    """

    def __init__(self, description: str, factory: IProtocolFactory, reactor: Any) -> None:
        self.description = description
        self.factory = factory
        self.reactor = reactor
        self.port: IListeningPort | None = None
        self.ready: Deferred[IListeningPort] = Deferred()

    def startService(self) -> None:
        super().startService()
        endpoint = serverFromString(self.reactor, self.description)
        d = endpoint.listen(self.factory)
        failures: list[Any] = []
        d.addCallbacks(self._listening, failures.append)
        if failures:  # e.g. the port is taken: fail start-up loudly, at once
            failures[0].raiseException()

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        self.ready.callback(port)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()  # type: ignore[no-any-return]
        return None


class Daemon(MultiService):
    """The service tree, with handles on its parts for tests and operations."""

    def __init__(self, settings: Settings, reactor: Any) -> None:
        super().__init__()
        self.settings = settings
        self.reactor = reactor
        self.broker = MemoryBroker(reactor, settings.history.size, settings.history.ttl)
        self.broker.setServiceParent(self)
        self.registry = Registry()
        self.context = Context(self.broker, settings, reactor, self.registry)
        self.sources = [sources.build(table, self.broker, reactor) for table in settings.sources]
        for source in self.sources:
            source.setServiceParent(self)
        self.web = PushdApp(self.context)
        self.site = self.web.site()
        self.listeners = [Listener(e, self.site, reactor) for e in settings.listen]
        for listener in self.listeners:
            listener.setServiceParent(self)

    def ready(self) -> Deferred[Any]:
        """Fires once every listener is up."""
        return DeferredList([listener.ready for listener in self.listeners], fireOnOneErrback=True)

    def stopService(self) -> Any:
        self.web.stop()
        return super().stopService()


def makeService(options: Options, reactor: Any = None) -> Daemon:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    try:
        return Daemon(options.settings, reactor)
    except ConfigError as e:
        raise SystemExit(f"pushd: {e}") from None
