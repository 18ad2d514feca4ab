"""Several pushd processes on one host sharing the listeners (``workers = N``).

One Python process uses one core. With ``workers = N`` the process twistd
starts (the *parent*, worker 0) binds every listener, serves like any other
worker, and starts N-1 more ``twistd -n pushd`` processes with the same
settings. Each of them is handed the parent's listening sockets and adopts
them (``reactor.adoptStreamPort``) instead of binding: the kernel then
spreads new connections over every process that accepts on the socket.
All of them must share one broker, Redis (``pushd.config.check`` refuses
the memory broker), so a message published on a connection served by one
process reaches subscribers served by another.

What the parent owns:

- **Start-up**: systemd's ``READY=1`` goes out once every worker has said it
  serves (``/readyz`` stays per process).
- **Crashes**: a worker that dies while the parent is not stopping is
  started again, after a delay that doubles from 0.2 s up to 10 s while it
  keeps dying before it ever served for 10 s, so a crash loop cannot spin.
- **Hangs**: a serving worker says ``alive`` every few seconds from its event
  loop; one silent for ``Workers.SILENT`` seconds (stuck in a loop, stopped)
  is killed and so started again: the parent is systemd's watchdog for them.
- **Stopping**: the parent's drain asks every worker to drain too (each
  does so as on SIGTERM; a second SIGTERM on the parent reaches them as
  well) and the parent exits once they all have, killing any still there
  a few seconds after the drain timeout.

The wire between parent and worker is three inherited descriptors and an
environment variable: ``$PUSHD_WORKER`` is the worker's index; fd 0 is a
pipe from the parent carrying ``drain`` and ``now`` (its first and second
SIGTERM), whose end means the parent is gone (the worker then drains and
exits rather than serving orphaned); fd 3 is a
pipe to the parent on which it writes ``ready`` once it serves, then
``alive`` every ``BEAT`` seconds; fds 4, 5,
... are the listening sockets in the order of ``listen`` (then ``[metrics]
listen``). ``$PUSHD_WORKER_GROUP`` (the parent's pid) names the abstract
unix sockets on which the processes hand each other their metrics (see
:class:`HostMetrics`).
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from typing import Any, Callable, Mapping

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

WORKER_ENV = "PUSHD_WORKER"
GROUP_ENV = "PUSHD_WORKER_GROUP"  # the parent's pid: names the workers' metrics sockets
CONTROL_FD = 3  # worker -> parent: "ready\n", then "alive\n" every BEAT seconds
BEAT = 5.0
FIRST_LISTEN_FD = 4
TWISTD = "from twisted.scripts.twistd import run; run()"
# systemd talks to the parent alone: a worker told these would claim MAINPID.
PARENT_ONLY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                   "LISTEN_FDNAMES")


def worker_index(environ: Mapping[str, str]) -> int:
    """This process's index: 0 for the parent (or a lone daemon), 1.. for a worker."""
    try:
        return max(0, int(environ.get(WORKER_ENV, "0")))
    except ValueError:
        return 0


def adopt(
    reactor: Any, fd: int, factory: IProtocolFactory, description: str = ""
) -> IListeningPort:
    """Accept on the inherited listening socket ``fd`` (tcp, unix, or ssl).

    ``adoptStreamPort`` duplicates the descriptor, so ours is closed after;
    an adopted port is closed, never shut down, when it stops listening, so
    a worker that stops does not stop the others' accepting. The socket
    carries no TLS state: for an ``ssl:`` listener the worker reads the same
    key and certificate (the endpoint string) and wraps the site itself.
    """
    if description.startswith("ssl:"):
        from twisted.internet.endpoints import serverFromString
        from twisted.protocols.tls import TLSMemoryBIOFactory

        context = getattr(serverFromString(reactor, description), "_sslContextFactory", None)
        if context is None:  # pragma: no cover - a Twisted that renamed it
            raise RuntimeError(f"cannot share the TLS listener {description!r} with workers")
        factory = TLSMemoryBIOFactory(context, False, factory)
    probe = socket.socket(fileno=fd)  # only to learn the address family
    try:
        return reactor.adoptStreamPort(fd, probe.family, factory)  # type: ignore[no-any-return]
    finally:
        probe.close()


def worker_command(options: Any) -> list[str]:
    """``twistd -n pushd`` with the parent's pushd arguments and log settings.

    Workers never daemonize and write no pidfile (the parent's is the
    service's); they log where the parent logs.
    """
    top = ["-n", "--pidfile="]
    parent = getattr(options, "parent", None)
    if parent is not None:
        logger = parent.get("logger")
        if logger is not None:
            if not isinstance(logger, str):
                logger = f"{logger.__module__}.{logger.__qualname__}"
            top.append(f"--logger={logger}")
        logfile = parent.get("logfile")
        if logfile:
            top.append(f"--logfile={logfile if logfile == '-' else os.path.abspath(logfile)}")
    return [sys.executable, "-c", TWISTD, *top, "pushd", *getattr(options, "argv", [])]


class ParentLink(Protocol):
    """A worker's end of the parent's pipes: says ``ready``, hears ``drain`` and
    ``now`` (the parent's first and second SIGTERM), notices the parent going.

    The parent asks over the pipe rather than by signal so that a worker
    that was sent SIGTERM itself as well (a whole process group, or
    ``KillMode=control-group``) takes the two as one request to drain, not
    as a second SIGTERM that cuts its drain short.
    """

    def __init__(self, on_word: Callable[[str], None], clock: Any = None) -> None:
        self.on_word = on_word
        self._buffer = b""
        self._beat = LoopingCall(self._alive)
        if clock is not None:
            self._beat.clock = clock

    def ready(self) -> None:
        """This worker serves: say so, then that it is alive, from the event
        loop, every ``BEAT`` seconds (a loop that hangs stops saying it)."""
        if self.transport is not None:
            self.transport.write(b"ready\n")
            if not self._beat.running:
                self._beat.start(BEAT, now=False)

    def _alive(self) -> None:
        if self.transport is not None:
            self.transport.write(b"alive\n")

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self.on_word(line.decode("ascii", "replace").strip())

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._beat.running:
            self._beat.stop()
        self.on_word("gone")


class WorkerProcess(ProcessProtocol):
    """The parent's handle on one worker process."""

    def __init__(self, pool: Workers, index: int) -> None:
        self.pool = pool
        self.index = index
        self.pid: int | None = None
        self.started_at = 0.0
        self.heard = 0.0  # when it last said anything (ready, alive)
        self.ready = False
        self.killed = False  # for its silence

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd != CONTROL_FD:
            return
        self.heard = self.pool.reactor.seconds()
        if b"ready" in data and not self.ready:
            self.ready = True
            self.pool._ready(self)

    def processEnded(self, reason: Failure) -> None:
        self.pool._ended(self, reason)

    def tell(self, word: bytes) -> None:
        """A line on the worker's stdin (see :class:`ParentLink`)."""
        try:
            self.transport.write(word + b"\n")  # type: ignore[union-attr]
        except (AttributeError, OSError):  # the pipe is already closed: it is exiting
            pass

    def signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)  # type: ignore[union-attr]
        except (ProcessExitedAlready, OSError):
            pass


class Workers:
    """The parent's side: starts workers 1..N-1, restarts the dead, stops them all."""

    FIRST_DELAY = 0.2  # seconds before a dead worker is started again
    MAX_DELAY = 10.0
    STEADY = 10.0  # a worker that served this long died of something new: no backoff
    SILENT = 4 * BEAT  # a serving worker not heard from this long hangs: killed

    def __init__(
        self,
        reactor: Any,
        count: int,
        command: list[str],
        environ: Mapping[str, str],
        cwd: str | None = None,
    ) -> None:
        self.reactor = reactor
        self.count = count
        self.command = command
        self.environ = {k: v for k, v in environ.items() if k not in PARENT_ONLY_ENV}
        self.cwd = cwd
        self.fds: list[int] = []
        self.procs: dict[int, WorkerProcess] = {}
        self.delays = dict.fromkeys(range(1, count), self.FIRST_DELAY)
        self.timers: dict[int, Any] = {}
        self.stopping = False
        self.restarts = 0
        self._waiting_ready = set(range(1, count))
        self._ready_d: Deferred[None] = Deferred()
        self._gone: list[Deferred[None]] = []
        self._watch = LoopingCall(self._check)
        self._watch.clock = reactor

    def start(self, fds: list[int]) -> Deferred[None]:
        """Start the workers on these listening fds; fires once each has served."""
        self.fds = list(fds)
        for index in range(1, self.count):
            self._spawn(index)
        self._watch.start(BEAT, now=False)
        if not self._waiting_ready:
            self._ready_d.callback(None)
        return self._ready_d

    def _spawn(self, index: int) -> None:
        self.timers.pop(index, None)
        if self.stopping:
            return
        env = dict(self.environ, **{WORKER_ENV: str(index), GROUP_ENV: str(os.getpid())})
        child_fds: dict[int, Any] = {0: "w", 1: 1, 2: 2, CONTROL_FD: "r"}
        for i, fd in enumerate(self.fds):
            child_fds[FIRST_LISTEN_FD + i] = fd
        proto = WorkerProcess(self, index)
        proto.started_at = self.reactor.seconds()
        self.procs[index] = proto
        self.reactor.spawnProcess(
            proto, self.command[0], self.command, env=env, path=self.cwd, childFDs=child_fds
        )
        log.info("worker {index} started: pid {pid}", index=index, pid=proto.pid)

    def _ready(self, proto: WorkerProcess) -> None:
        log.info("worker {index} (pid {pid}) serving", index=proto.index, pid=proto.pid)
        self._waiting_ready.discard(proto.index)
        if not self._waiting_ready and not self._ready_d.called:
            self._ready_d.callback(None)

    def _ended(self, proto: WorkerProcess, reason: Failure) -> None:
        if self.procs.get(proto.index) is proto:
            del self.procs[proto.index]
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        how = f"signal {sig}" if sig else f"exit code {code}"
        if self.stopping:
            log.info("worker {index} (pid {pid}) exited: {how}", index=proto.index,
                     pid=proto.pid, how=how)
            if not self.procs:
                gone, self._gone = self._gone, []
                for d in gone:
                    d.callback(None)
            return
        now = self.reactor.seconds()
        if proto.ready and now - proto.started_at >= self.STEADY:
            self.delays[proto.index] = self.FIRST_DELAY
        delay = self.delays[proto.index]
        self.delays[proto.index] = min(delay * 2, self.MAX_DELAY)
        log.warn(
            "worker {index} (pid {pid}) died ({how}); starting it again in {delay:g}s",
            index=proto.index, pid=proto.pid, how=how, delay=delay,
        )
        self.restarts += 1
        self.timers[proto.index] = self.reactor.callLater(delay, self._spawn, proto.index)

    def _check(self) -> None:
        """Kill a serving worker that has been silent for ``SILENT`` seconds
        (its event loop hangs): it is then started again as if it had died."""
        now = self.reactor.seconds()
        for proto in list(self.procs.values()):
            if proto.ready and not proto.killed and now - proto.heard > self.SILENT:
                proto.killed = True
                log.warn(
                    "worker {index} (pid {pid}) silent for {s:.0f}s: killed",
                    index=proto.index, pid=proto.pid, s=now - proto.heard,
                )
                proto.signal("KILL")

    def terminate(self) -> None:
        """Tell every worker to drain, as SIGTERM would, and start no more."""
        self.stopping = True
        if self._watch.running:
            self._watch.stop()
        for timer in self.timers.values():
            if timer.active():
                timer.cancel()
        self.timers.clear()
        for proto in list(self.procs.values()):
            proto.tell(b"drain")

    def cut_short(self) -> None:
        """As a second SIGTERM: every worker stops waiting for its clients."""
        for proto in list(self.procs.values()):
            proto.tell(b"now")

    def kill(self) -> None:
        for proto in list(self.procs.values()):
            log.warn("worker {index} (pid {pid}) still running: killed", index=proto.index,
                     pid=proto.pid)
            proto.signal("KILL")

    def gone(self) -> Deferred[None]:
        """Fires once no worker runs (call after :meth:`terminate`)."""
        if not self.procs:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._gone.append(d)
        return d

    @property
    def pids(self) -> dict[int, int | None]:
        return {index: proto.pid for index, proto in sorted(self.procs.items())}


# -- /metrics for the whole host ---------------------------------------------------


class _Exposition(Protocol):
    """Serves this process's exposition to a sibling worker, then hangs up."""

    def __init__(self, own: Callable[[], bytes]) -> None:
        self.own = own

    def connectionMade(self) -> None:
        transport: Any = self.transport
        try:  # abstract sockets have no file mode: let only our own user in
            creds = transport.socket.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
            )
            allowed = struct.unpack("3i", creds)[1] == os.getuid()
        except OSError:
            allowed = False
        if allowed:
            transport.write(self.own())
        transport.loseConnection()


class _Collect(Protocol):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.done.callback(b"".join(self.chunks))


class HostMetrics:
    """``/metrics`` answered by any worker covers every worker of the host.

    A scrape reaches whichever process accepted it, so each process also
    serves its own exposition on an abstract unix socket named after the
    parent's pid and its index; the one scraped reads its siblings' (each
    with a deadline: a worker being restarted is left out, not waited for)
    and answers them all, every sample labelled ``worker="i"``. Sum over
    ``worker`` in PromQL for the host; a worker's counters restart from 0
    with the worker, which ``rate()`` treats as any counter reset.
    """

    def __init__(
        self, reactor: Any, group: str, index: int, count: int, own: Callable[[], bytes],
        timeout: float = 2.0,
    ) -> None:
        self.reactor = reactor
        self.group = group
        self.index = index
        self.count = count
        self.own = own
        self.timeout = timeout
        self.port: Any = None

    def address(self, index: int) -> str:
        return f"\0pushd-{self.group}-metrics-{index}"

    def start(self) -> None:
        from twisted.internet.protocol import Factory

        factory = Factory.forProtocol(lambda: _Exposition(self.own))
        factory.noisy = False
        self.port = self.reactor.listenUNIX(self.address(self.index), factory)

    def stop(self) -> Deferred[None] | None:
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None  # type: ignore[no-any-return]

    def _fetch(self, index: int) -> Deferred[bytes]:
        from twisted.internet.endpoints import UNIXClientEndpoint
        from twisted.internet.protocol import Factory

        collect = _Collect()
        factory = Factory.forProtocol(lambda: collect)
        factory.noisy = False  # no "Starting factory" lines per scrape
        endpoint = UNIXClientEndpoint(self.reactor, self.address(index), timeout=self.timeout)
        d = endpoint.connect(factory)
        d.addCallback(lambda _: collect.done)
        return d.addTimeout(self.timeout, self.reactor)

    async def gather(self) -> bytes:
        """Every reachable worker's samples, labelled, in one exposition."""
        from twisted.internet.defer import DeferredList

        others = [i for i in range(self.count) if i != self.index]
        texts = {self.index: self.own()}
        results = await DeferredList([self._fetch(i) for i in others], consumeErrors=True)
        for index, (ok, text) in zip(others, results, strict=True):
            if ok and text:
                texts[index] = text
        return merge_expositions(texts)


def merge_expositions(texts: Mapping[int, bytes]) -> bytes:
    """Several processes' Prometheus text as one, each sample gaining ``worker``."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, Any] = {}
    for index, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text.decode("utf-8")):
            merged = families.setdefault(family.name, family)
            samples = [
                s._replace(labels={**s.labels, "worker": str(index)}) for s in family.samples
            ]
            if merged is family:
                family.samples = samples
            else:
                merged.samples.extend(samples)

    class _Merged:
        def collect(self) -> Any:
            return iter(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())  # type: ignore[arg-type]
    return generate_latest(registry)
