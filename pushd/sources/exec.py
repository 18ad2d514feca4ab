"""``exec``: a program's standard output, one message per line.

Like websocketd, but into a channel: the command is an argv list handed to
``spawnProcess`` (never a shell, so nothing in it is interpreted). Its
stderr goes to the log. When it exits it is started again with backoff; when
the daemon stops it gets SIGTERM, then SIGKILL after ``stop_timeout``.

The command runs in a session (and process group) of its own, and signals go
to the whole group: a shell pipeline or a script's helpers stop with it. Left
in the daemon's group, they would outlive it and, holding the output pipe,
keep the source from ever seeing its command end. When the command exits by
itself, whatever it left running in its group gets SIGTERM too, so a restart
never runs beside the previous run's leftovers.

Programs must write line by line (``python -u``, ``stdbuf -oL``, ``grep
--line-buffered``): a pipe makes most programs buffer their output.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IProcessTransport, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from pushd.broker.interface import Broker
from pushd.config import ConfigError
from pushd.sources.base import Backoff, LineBuffer, Restarting, Settings, decode_line

# Run first in the child, in place of the command (``execv`` keeps the pid):
# a new session makes the pid the id of a process group holding everything
# the command starts. ``-I -S``: no PYTHON* variables, no site, a quick start.
_SESSION = ["-I", "-S", "-c", "import os, sys; os.setsid(); os.execv(sys.argv[1], sys.argv[2:])"]


class _Child(ProcessProtocol):
    """One run of the command: feeds its lines to the source, reports its end."""

    def __init__(self, source: Exec) -> None:
        self.source = source
        self.out = LineBuffer()
        self.err = LineBuffer()
        self.ended: Deferred[str] = Deferred()

    def outReceived(self, data: bytes) -> None:
        for line in self.out.feed(data):
            self.source.line(line)

    def errReceived(self, data: bytes) -> None:
        for line in self.err.feed(data):
            self.source.stderr(line)

    def processExited(self, reason: Failure) -> None:
        # Its output pipes may still be held by what it started; ending
        # those lets processEnded come.
        self.source.signal_group(signal.SIGTERM)

    def processEnded(self, reason: Failure) -> None:
        tail = self.out.flush()
        if tail is not None:
            self.source.line(tail)
        tail = self.err.flush()
        if tail is not None:
            self.source.stderr(tail)
        if self.out.overflowed:
            self.source.errors += self.out.overflowed
        if reason.check(ProcessDone):
            self.ended.callback("exited with status 0")
        elif reason.check(ProcessTerminated):
            value = reason.value
            if value.signal is not None:
                self.ended.callback(f"killed by signal {value.signal}")
            else:
                self.ended.callback(f"exited with status {value.exitCode}")
        else:
            self.ended.errback(reason)


class Exec(Restarting):
    """Publishes each stdout line of ``argv`` to ``channel``; restarts it on exit."""

    def __init__(
        self,
        broker: Broker,
        reactor: Any,
        channel: str,
        argv: list[str],
        *,
        executable: str | None = None,
        as_json: bool = False,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        stop_timeout: float = 5.0,
        backoff: Backoff | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        """``reactor`` spawns the process; ``clock`` (default: the reactor)
        times backoff and the SIGKILL grace period."""
        clock = clock or reactor
        super().__init__(broker, f"exec:{channel}", clock, backoff or Backoff(clock))
        self.reactor = reactor
        self.channel = channel
        self.argv = argv
        self.executable = executable or argv[0]
        self.as_json = as_json
        self.env = env or {}
        self.cwd = cwd
        self.stop_timeout = stop_timeout
        self.transport: IProcessTransport | None = None
        self.group: int | None = None  # the running command's process group
        self.last_exit: str | None = None
        self._kill: IDelayedCall | None = None

    @property
    def pid(self) -> int | None:
        """The running child's pid, or None between runs."""
        return self.transport.pid if self.transport is not None else None

    def run(self) -> Deferred[str]:
        child = _Child(self)
        env = dict(os.environ)
        env.update(self.env)
        self.transport = self.reactor.spawnProcess(
            child, sys.executable, [sys.executable, *_SESSION, self.executable, *self.argv],
            env=env, path=self.cwd,
        )
        self.group = self.transport.pid
        child.ended.addBoth(self._gone)
        self.connected(f"started {self.argv[0]} (pid {self.transport.pid})")
        return child.ended

    def _gone(self, result: Any) -> Any:
        self.transport = None
        self.group = None
        self.last_exit = result if isinstance(result, str) else None
        if self._kill is not None and self._kill.active():
            self._kill.cancel()
        self._kill = None
        return result

    def halt(self) -> None:
        """SIGTERM now, SIGKILL if it is still there after ``stop_timeout``."""
        if self.transport is None:
            return
        self._signal("TERM")
        self._kill = self.clock.callLater(self.stop_timeout, self._signal, "KILL")

    def _signal(self, name: str) -> None:
        if self.transport is None:
            return
        if name == "KILL":
            self.log.warn(
                "source {source}: pid {pid} ignored SIGTERM for {t}s, killing it",
                source=self.name, pid=self.transport.pid, t=self.stop_timeout,
            )
        if self.signal_group(getattr(signal, "SIG" + name)):
            return
        try:  # no group yet (the child is between fork and setsid)
            self.transport.signalProcess(name)
        except (OSError, ProcessExitedAlready):  # already gone: processEnded is on its way
            pass

    def signal_group(self, sig: int) -> bool:
        """Send ``sig`` to the command's process group; False if there is none."""
        if self.group is None:
            return False
        try:
            os.killpg(self.group, sig)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def line(self, raw: bytes) -> None:
        ok, data = decode_line(self, raw, self.as_json)
        if ok:
            self.publish(self.channel, data)

    def stderr(self, raw: bytes) -> None:
        self.log.info(
            "source {source} stderr: {line}",
            source=self.name, line=raw.decode("utf-8", "replace"),
        )


def from_config(table: dict[str, Any], broker: Broker, reactor: Any) -> Exec:
    s = Settings(table)
    channel = s.channel()
    argv = s.strings("command")
    if not argv or not argv[0]:
        raise ConfigError("[[source]] exec: command must name a program")
    executable = shutil.which(argv[0])
    if executable is None:
        raise ConfigError(f"[[source]] exec: command {argv[0]!r} is not an executable on PATH")
    fmt = s.choice("format", ("text", "json"), "text")
    env = s.string_table("env")
    cwd = s.get("cwd", str, None)
    if cwd is not None and not os.path.isdir(cwd):
        raise ConfigError(f"[[source]] exec: cwd {cwd!r} is not a directory")
    stop_timeout = s.number("stop_timeout", 5.0)
    backoff = s.backoff(reactor)
    s.done()
    return Exec(
        broker, reactor, channel, argv, executable=executable, as_json=fmt == "json",
        env=env, cwd=cwd, stop_timeout=stop_timeout, backoff=backoff,
    )
