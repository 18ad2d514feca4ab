"""``twistd pushd``: command line, settings and the service tree.

This is the one module that resolves the global reactor and wires every
layer: broker, then sources (which publish into it), then the web site
(which reads from it), each a child of one MultiService. Nothing listens or
runs before ``startService``.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from types import FrameType
from typing import Any, Mapping

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.resource import Resource

from pushd import compat, config, sources
from pushd.broker.memory import MemoryBroker
from pushd.config import ConfigError, Settings
from pushd.metrics import metrics_resource, ops_root
from pushd.rates import Buckets
from pushd.registry import Registry
from pushd.server import HttpServer, WebBridge
from pushd.systemd import Notifier
from pushd.web.app import PushdApp
from pushd.web.context import Context
from pushd.workers import (
    CONTROL_FD,
    FIRST_LISTEN_FD,
    GROUP_ENV,
    HostMetrics,
    ParentLink,
    Workers,
    adopt,
    worker_command,
    worker_index,
)

log = Logger()


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
        ["workers", None, None, "Processes sharing the listeners (default 1; >1 needs Redis)."],
        ["broker", None, None, 'Where channels live: "memory" (default) or redis://host:port/db.'],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self.settings = Settings()
        self.argv: list[str] = []
        self.cwd = os.getcwd()

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Kept as given (and where): workers are started with the same arguments."""
        self.argv = list(sys.argv[1:] if options is None else options)
        self.cwd = os.getcwd()
        super().parseOptions(options)

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
        workers = _number(self, "workers", int)
        if workers is not None:
            settings.workers = workers
        if self["broker"] is not None:
            settings.broker = self["broker"]
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

    def __init__(
        self, description: str, factory: IProtocolFactory, reactor: Any, fd: int | None = None
    ) -> None:
        self.description = description
        self.factory = factory
        self.reactor = reactor
        self.fd = fd  # a worker's inherited listening socket, adopted instead of bound
        self.port: IListeningPort | None = None
        self.ready: Deferred[IListeningPort] = Deferred()

    def startService(self) -> None:
        super().startService()
        if self.fd is not None:
            self._listening(adopt(self.reactor, self.fd, self.factory, self.description))
            return
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


def broker_for(settings: Settings) -> Any:
    """The broker class ``settings.broker`` names, called as MemoryBroker is."""
    if settings.broker == "memory":
        return MemoryBroker
    from functools import partial

    from pushd.broker.redis import RedisBroker

    return partial(RedisBroker, url=settings.broker, timeout=settings.broker_timeout)


class Daemon(MultiService):
    """The service tree, with handles on its parts for tests and operations.

    Stopping it drains (see :meth:`drain`); ``environ`` is where systemd's
    ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC`` are read (``makeService``
    passes ``os.environ``; an in-process daemon tells no one).
    """

    def __init__(
        self,
        settings: Settings,
        reactor: Any,
        environ: Mapping[str, str] | None = None,
        broker_class: Any = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.reactor = reactor
        limits = settings.limits
        if broker_class is None:
            broker_class = broker_for(settings)
        self.broker = broker_class(
            reactor,
            settings.history.size,
            settings.history.ttl,
            max_channels=limits.max_channels,
            retry_after=limits.retry_after,
            max_bytes=settings.history.max_bytes,
        )
        self.broker.setServiceParent(self)
        for problem in compat.self_check():
            log.warn("compatibility: {problem}", problem=problem)
        # Not a child service: it must ping through the whole drain and stop
        # last, so the daemon starts and stops it itself.
        self.notifier = Notifier(reactor, environ or {})
        self.registry = Registry()
        if hasattr(self.broker, "available"):  # /readyz is 503 while Redis is away
            self.registry.available = lambda: self.broker.available
        self.context = Context(self.broker, settings, reactor, self.registry)
        # 0: this process binds (alone, or the parent of workers); 1..: a worker
        # that adopts the parent's listening sockets (pushd.workers).
        self.worker = worker_index(environ or {})
        # Sources run once per host, in the parent: each worker running them
        # would publish every tick, line or command output once per process.
        self.sources = [] if self.worker else [
            sources.build(table, self.broker, reactor) for table in settings.sources
        ]
        for source in self.sources:
            source.setServiceParent(self)
        if settings.web.demo and not self.worker:  # /status is fed over pushd itself
            from pushd.sources.status import StatusSource

            StatusSource(self.broker, self.registry, reactor).setServiceParent(self)
        self.web = PushdApp(self.context)
        self.site = self.web.site()
        self.site.connections.max_total = limits.max_connections
        self.site.connections.max_per_address = limits.max_connections_per_address
        self.site.retry_after = limits.retry_after
        if limits.connect_rate:
            self.site.connect_rates = Buckets(limits.connect_rate, reactor)
        # behind a trusted proxy those limits count the clients it names
        self.site.clients = self.context.clients
        self.site.draining = lambda: self.registry.draining
        self.workers: Workers | None = None  # the parent's, set by makeService
        self._link: ParentLink | None = None
        self._told_to_stop = False  # a worker's parent asked it to drain
        fds = iter(range(FIRST_LISTEN_FD, FIRST_LISTEN_FD + len(settings.listen) + 1))

        def inherited() -> int | None:
            return next(fds) if self.worker else None

        self.listeners = [
            Listener(e, self.site, reactor, inherited()) for e in settings.listen
        ]
        for listener in self.listeners:
            listener.setServiceParent(self)
        self.metrics_listener: Listener | None = None
        metrics = metrics_resource(self)
        self.host_metrics: HostMetrics | None = None
        if settings.workers > 1:  # a scrape of any worker answers for all of them
            group = (environ or {}).get(GROUP_ENV) or str(os.getpid())
            self.host_metrics = HostMetrics(
                reactor, group, self.worker, settings.workers, metrics.own
            )
            metrics.host = self.host_metrics
        if settings.metrics.listen:
            metrics_site = HttpServer(
                WebBridge(ops_root(self, metrics)), reactor, settings.http,
                lambda method, path: 1024,
            )
            self.metrics_listener = Listener(
                settings.metrics.listen, metrics_site, reactor, inherited()
            )
            self.metrics_listener.setServiceParent(self)
        else:
            self.web.extra_routes["metrics"] = metrics
        self._drain_done: Deferred[None] | None = None
        self._cut_early = False  # a second SIGTERM came before the drain's wait began
        self._stopping: Deferred[None] | None = None

    def resource(self) -> Resource:
        """Every URL of pushd as one twisted.web resource (see :func:`embed`)."""
        return self.site.handle.resource  # type: ignore[no-any-return]

    def ready(self) -> Deferred[Any]:
        """Fires once every listener is up."""
        listeners = list(self.listeners)
        if self.metrics_listener is not None:
            listeners.append(self.metrics_listener)
        return DeferredList([listener.ready for listener in listeners], fireOnOneErrback=True)

    def startService(self) -> None:
        self.notifier.startService()
        if self.worker:
            from twisted.internet.stdio import StandardIO

            self._link = ParentLink(self._parent_says, self.reactor)
            StandardIO(self._link, stdin=0, stdout=CONTROL_FD, reactor=self.reactor)
        if self.host_metrics is not None:
            self.host_metrics.start()
        super().startService()
        # Ready once the listeners are up *and* the reactor runs: twistd starts
        # services before reactor.run(), and only then is our SIGTERM handler
        # installed, so a supervisor told READY=1 may stop us safely.
        self.reactor.callWhenRunning(
            lambda: self.ready().addCallbacks(self._serving, lambda f: None)
        )

    def _serving(self, _: object) -> None:
        self.registry.started = True
        if self._link is not None:
            self._link.ready()
            log.info("worker {index} ready", index=self.worker)
            return
        if self.workers is not None:
            ports = [x.port for x in (*self.listeners, self.metrics_listener)
                     if x is not None and x.port is not None]
            for port in ports:
                # Close, never shut down, the shared socket when this process stops
                # listening: a shutdown() would stop every worker's accept() with it
                # (EINVAL), not only ours. Adopted ports already behave so.
                port._shouldShutdown = False
            fds = [port.fileno() for port in ports]
            self.workers.start(fds).addCallback(self._all_serving)
            return
        self._all_serving(None)

    def _all_serving(self, _: object) -> None:
        """Every process serves: now systemd may count the service as started."""
        self.notifier.ready()
        workers = f" ({self.settings.workers} workers)" if self.workers is not None else ""
        log.info(
            "pushd ready: {listen}{workers}",
            listen=", ".join(self.settings.listen), workers=workers,
        )

    def _parent_says(self, word: str) -> None:
        """A worker hears its parent (:class:`pushd.workers.ParentLink`).

        ``drain`` is the parent's SIGTERM, ``now`` its second one; ``gone``:
        the parent went away without stopping us, so drain and exit rather
        than serve orphaned. A drain already under way (this process was
        sent SIGTERM itself too) is not cut short by ``drain`` or ``gone``.
        """
        stopping = self._stopping is not None or self.registry.draining
        if word == "now":
            self.terminate()
        elif word in ("drain", "gone") and not stopping and not self._told_to_stop:
            self._told_to_stop = True
            if word == "gone":
                log.warn("worker {index}: the parent process is gone; draining",
                         index=self.worker)
            self.terminate()

    # -- stopping ---------------------------------------------------------
    def stopService(self) -> Deferred[None]:
        """Drain, then stop sources and broker. Safe to call more than once."""
        if self._stopping is None:
            self._stopping = Deferred.fromCoroutine(self._stop())
        return self._stopping

    async def _stop(self) -> None:
        await self.drain()
        self.web.stop()
        try:
            await maybeDeferred(super().stopService)
        finally:
            if self.host_metrics is not None:
                await maybeDeferred(self.host_metrics.stop)
            self.notifier.stopService()

    async def drain(self) -> None:
        """Stop accepting, end every subscription politely, wait for the clients to go.

        ``/readyz`` turns 503 first, so a load balancer stops sending new
        clients; the listeners close; then each open subscription ends in
        its transport's way (SSE: a jittered ``retry:`` and the end of the
        response; streams: the final chunk; long-polls: their cursor;
        WebSockets: close 1001). Idle keep-alive connections are closed,
        and every answer from now on says ``Connection: close``. The wait
        ends when the last connection is gone, at ``[drain] timeout``, or
        at :meth:`cut_short`; whatever is still open then is dropped.
        """
        if self.registry.draining:
            return
        self.registry.draining = True
        self.notifier.stopping()
        began = self.reactor.seconds()
        if self.workers is not None:
            self.workers.terminate()  # they drain alongside
        connections = self.site.connections
        log.info(
            "draining: {n} subscriptions, {c} connections, up to {t:g}s",
            n=sum(1 for _ in self.registry.all()),
            c=connections.total,
            t=self.settings.drain.timeout,
        )
        await DeferredList([maybeDeferred(listener.stopService) for listener in self.listeners])
        for _, conn in self.registry.all():
            conn.end_politely()  # type: ignore[attr-defined]
        connections.close_idle()
        done: Deferred[None] = Deferred()
        self._drain_done = done
        if self._cut_early:
            self.cut_short()
        timer = self.reactor.callLater(self.settings.drain.timeout, self.cut_short)
        connections.empty().addCallback(lambda _: self.cut_short())
        await done
        if timer.active():
            timer.cancel()
        if connections.total:
            log.warn("drain: dropping {n} connections still open", n=connections.total)
            connections.abort_all()
        else:
            log.info("drain: every client has gone")
        if self.workers is not None:
            await self._workers_gone(began + self.settings.drain.timeout + WORKER_GRACE)

    async def _workers_gone(self, deadline: float) -> None:
        """Wait for the workers' own drains; kill whatever is left at ``deadline``."""
        assert self.workers is not None
        gone = self.workers.gone()
        timer = self.reactor.callLater(
            max(0.0, deadline - self.reactor.seconds()), self.workers.kill
        )
        await gone
        if timer.active():
            timer.cancel()

    def cut_short(self) -> None:
        """End the drain's wait now (its timeout, or a second SIGTERM).

        Asked while the listeners are still closing, before the wait began,
        it ends the wait as soon as it begins.
        """
        done, self._drain_done = self._drain_done, None
        if done is not None:
            done.callback(None)
        elif self.registry.draining:
            self._cut_early = True

    def terminate(self) -> None:
        """SIGTERM: the first drains and stops the reactor; the next cuts the drain short.

        Stopping the reactor ourselves (rather than through Twisted's own
        SIGTERM handler) is what makes twistd exit 0: it only re-raises a
        signal it caught itself.
        """
        if self._stopping is not None or self.registry.draining:
            log.info("second SIGTERM: not waiting for clients any longer")
            if self.workers is not None:
                self.workers.cut_short()
            self.cut_short()
            return
        log.info("SIGTERM: draining")
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass

    def hangup(self) -> None:
        """SIGHUP: logged, and the daemon keeps serving.

        Supervisors and terminals send SIGHUP expecting a daemon to reopen
        its log files, not to die (its default action kills the process
        with no drain and no log line). pushd's loggers write to stdout,
        which the supervisor owns (twistd's own ``--logfile`` rotates on
        SIGUSR1), so there is nothing to reopen: the line is all it does.
        """
        log.info("SIGHUP: logs go to stdout, nothing to reopen; still serving")


# Seconds past the drain timeout the parent waits for a worker to exit before killing it.
WORKER_GRACE = 5.0


def install_sigterm(daemon: Daemon, reactor: Any) -> None:
    """Route SIGTERM to :meth:`Daemon.terminate` on the reactor thread.

    Installed once the reactor runs, so it replaces Twisted's own handler.
    """

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        reactor.callFromThread(daemon.terminate)

    signal.signal(signal.SIGTERM, on_sigterm)


def install_sighup(daemon: Daemon, reactor: Any) -> None:
    """Route SIGHUP to :meth:`Daemon.hangup` on the reactor thread, so it
    no longer kills the process (installed once the reactor runs, like SIGTERM's)."""

    def on_sighup(signum: int, frame: FrameType | None) -> None:
        reactor.callFromThread(daemon.hangup)

    signal.signal(signal.SIGHUP, on_sighup)


# A young-generation collection every 5,000 net new objects instead of 700.
GC_THRESHOLDS = (5000, 10, 10)


def tune_gc() -> None:
    """Make the cyclic garbage collector's stops rarer and shorter in a daemon.

    Connections are long-lived objects made in bursts: a reconnect storm.
    With CPython's defaults each burst sets off full collections, and a full
    collection walks every open connection while no message moves: 300-365
    ms each while 10,000 WebSocket clients connected (bench ``scale``
    scenario, three runs). Two changes, measured the same way:

    - ``gc.freeze()`` once the daemon runs: what startup made (modules,
      classes, the configuration) lives as long as the process, so no later
      collection need walk it again;
    - a young-generation threshold of 5,000 instead of 700: a full collection
      is considered every 500,000 net new objects instead of 70,000.

    Together: garbage collection during the 10,000 connects took 0.73-0.87 s
    instead of 1.53-1.65 s, and its longest stop 59-76 ms instead of 306-365
    ms. A steady fan-out makes almost no garbage and is not affected. Only
    ``twistd pushd`` does this; a daemon embedded in another process (the
    tests) leaves that process's collector alone.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def embed(settings: Settings | None = None, reactor: Any = None) -> Daemon:
    """pushd inside a Twisted program of your own: its routes, no listener.

    Mount ``daemon.resource()`` under a prefix of your site (a Klein route
    with ``branch=True``, or ``putChild`` on a twisted.web resource), start
    the daemon as a service of your application (or call ``startService``),
    and publish from your own code through ``daemon.broker``. One reactor,
    one broker; ``settings.listen`` is ignored (your site listens), and the
    daemon installs no signal handlers and leaves the garbage collector alone.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    settings = settings if settings is not None else Settings()
    settings.listen = []
    return Daemon(settings, reactor)


def makeService(options: Options, reactor: Any = None) -> Daemon:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    try:
        daemon = Daemon(options.settings, reactor, os.environ)
    except ConfigError as e:
        raise SystemExit(f"pushd: {e}") from None
    if options.settings.workers > 1 and not daemon.worker:
        daemon.workers = Workers(
            reactor, options.settings.workers, worker_command(options), os.environ, options.cwd
        )
    reactor.callWhenRunning(install_sigterm, daemon, reactor)
    reactor.callWhenRunning(install_sighup, daemon, reactor)
    reactor.callWhenRunning(tune_gc)
    return daemon
