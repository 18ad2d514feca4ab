"""A real ``twistd -n pushd`` child for tests, driven by Deferreds.

``Child`` collects the process's output and fires Deferreds when a pattern
appears or when it exits, so tests wait on the event itself, never sleep.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

ROOT = Path(__file__).resolve().parent.parent
TWISTD = "from twisted.scripts.twistd import run; run()"
TIMEOUT = 20.0


def bounded(d: Deferred[Any], timeout: float = TIMEOUT) -> Deferred[Any]:
    return d.addTimeout(timeout, reactor)


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (for programs that need a number)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child(ProcessProtocol):
    """A child process: its output, Deferreds on output patterns, and its exit."""

    def __init__(self) -> None:
        self.output = b""
        self.exited: Deferred[tuple[int | None, int | None]] = Deferred()
        self.exit_time: float | None = None
        self._waiting: list[tuple[re.Pattern[bytes], Deferred[re.Match[bytes]]]] = []

    def wait_for(self, pattern: bytes, timeout: float = TIMEOUT) -> Deferred[re.Match[bytes]]:
        d: Deferred[re.Match[bytes]] = Deferred()
        self._waiting.append((re.compile(pattern), d))
        self._check()
        return bounded(d, timeout)

    def outReceived(self, data: bytes) -> None:
        self.output += data
        self._check()

    errReceived = outReceived

    def _check(self) -> None:
        fire = []
        for entry in list(self._waiting):
            match = entry[0].search(self.output)
            if match:
                self._waiting.remove(entry)
                fire.append((entry[1], match))
        for d, match in fire:
            d.callback(match)

    def processEnded(self, reason: Failure) -> None:
        self.exit_time = reactor.seconds()
        for _, d in self._waiting:
            if not d.called:
                d.errback(AssertionError(f"exited first; output:\n{self.output.decode()[-3000:]}"))
        self._waiting = []
        self.exited.callback((reason.value.exitCode, reason.value.signal))

    def log(self) -> str:
        return self.output.decode(errors="replace")[-4000:]


def spawn_pushd(
    tmp_path: Path,
    *args: str,
    config: str = "source = []\n",
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    logger: str = "pushd.logs.text_logger",
) -> tuple[Child, Any]:
    """``twistd -n --logger <logger> pushd --config <config> <args>``; no sources by default.

    The text logger at info level keeps Autobahn's debug chatter out of the log.
    """
    path = tmp_path / "pushd.toml"
    path.write_text(config)
    child = Child()
    environ = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    if "NOTIFY_SOCKET" not in (env or {}):
        environ.pop("NOTIFY_SOCKET", None)  # never tell a real supervisor about a test
    argv = [
        *(prefix or []),
        sys.executable,
        "-c",
        TWISTD,
        "-n",
        "--pidfile=",
        f"--logger={logger}",
        "pushd",
        "--config",
        str(path),
        *args,
    ]
    process = reactor.spawnProcess(child, argv[0], argv, env=environ, path=str(tmp_path))
    return child, process


async def started_port(child: Child) -> int:
    """The port of the first ``tcp:0`` listener, from twistd's log."""
    return int((await child.wait_for(rb"PushdSite starting on (\d+)")).group(1))


def stop(child: Child, process: Any) -> None:
    if not child.exited.called:
        try:
            process.signalProcess("KILL")
        except Exception:  # already gone
            pass
