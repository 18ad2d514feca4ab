"""A config file with one source of each type, under a real ``twistd -n pushd``.

The daemon is a child process; the test learns its port from its log
(``tcp:0``), asks ``/healthz`` with treq, sends SIGTERM and expects exit
status 0, every source's start-up line, no traceback, and no orphaned exec
child. Everything waits on Deferreds fired by the child's output or exit.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from tests.test_sources_base import bounded

ROOT = Path(__file__).resolve().parent.parent
TWISTD = "from twisted.scripts.twistd import run; run()"


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (so sources must retry)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon(ProcessProtocol):
    """Collects the daemon's log; fires Deferreds on log patterns and on exit."""

    def __init__(self) -> None:
        self.output = b""
        self.exited: Deferred[Any] = Deferred()
        self._waiting: list[tuple[re.Pattern[bytes], Deferred[re.Match[bytes]]]] = []

    def wait_for(self, pattern: bytes) -> Deferred[re.Match[bytes]]:
        d: Deferred[re.Match[bytes]] = Deferred()
        self._waiting.append((re.compile(pattern), d))
        self._check()
        return bounded(d, 30)

    def outReceived(self, data: bytes) -> None:
        self.output += data
        self._check()

    errReceived = outReceived

    def _check(self) -> None:
        fire = []
        for entry in list(self._waiting):
            match = entry[0].search(self.output)
            if match:
                self._waiting.remove(entry)  # before callback: it may call wait_for
                fire.append((entry[1], match))
        for d, match in fire:
            d.callback(match)

    def processEnded(self, reason: Failure) -> None:
        self.exited.callback((reason.value.exitCode, reason.value.signal))


@pytest_twisted.ensureDeferred
async def test_every_source_type_starts_and_stops_under_twistd(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("")
    script = "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.5)\n"
    config = tmp_path / "pushd.toml"
    config.write_text(f"""
[[source]]
type = "ticker"
channel = "ticker"
interval = 0.5

[[source]]
type = "exec"
channel = "exec-out"
command = [{sys.executable!r}, "-u", "-c", {script!r}]
stop_timeout = 3

[[source]]
type = "file"
channel = "file-out"
path = {str(log)!r}

[[source]]
type = "http"
channel = "http-out"
url = "http://127.0.0.1:{closed_port()}/events"
format = "sse"
backoff_initial = 0.2

[[source]]
type = "redis"
endpoint = "tcp:host=127.0.0.1:port={closed_port()}"
channels = ["news"]
channel = "redis.{{channel}}"
backoff_initial = 0.2
""")
    daemon = Daemon()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "pushd",
            "--config", str(config), "--listen", "tcp:0:interface=127.0.0.1"]
    process = reactor.spawnProcess(daemon, sys.executable, argv, env=env, path=str(tmp_path))
    try:
        port = int((await daemon.wait_for(rb"starting on (\d+)")).group(1))
        child = int((await daemon.wait_for(rb"source exec:exec-out: started \S+ \(pid (\d+)\)"))
                    .group(1))
        await daemon.wait_for(rb"source file:file-out: following")
        await daemon.wait_for(rb"source http:http-out retrying")
        await daemon.wait_for(rb"source redis:\S+ retrying")
        response = await bounded(treq.get(f"http://127.0.0.1:{port}/healthz"))
        assert response.code == 200
        await response.content()
    finally:
        if daemon.exited.called is False:
            process.signalProcess("TERM")
    status, sig = await bounded(daemon.exited, 30)
    log = daemon.output.decode()
    # pushd handles SIGTERM itself (a drain, then reactor.stop()), so twistd
    # does not re-raise the signal after shutdown: a clean stop exits 0.
    assert (status, sig) == (0, None), log[-3000:]
    assert "Server Shut Down." in log, log[-3000:]
    assert "source exec:exec-out stopped" in log
    assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]
    try:
        os.kill(child, 0)
    except ProcessLookupError:
        pass
    else:
        raise AssertionError(f"the exec source's child {child} outlived the daemon")


@pytest_twisted.ensureDeferred
async def test_a_bad_source_table_stops_twistd_with_the_key_named(tmp_path: Path) -> None:
    config = tmp_path / "pushd.toml"
    config.write_text('[[source]]\ntype = "exec"\nchannel = "x"\ncommand = ["true"]\nshel = 1\n')
    daemon = Daemon()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "pushd",
            "--config", str(config), "--listen", "tcp:0:interface=127.0.0.1"]
    reactor.spawnProcess(daemon, sys.executable, argv, env=env, path=str(tmp_path))
    status, _ = await bounded(daemon.exited, 30)
    assert status != 0
    assert b"[[source]] exec: unknown setting 'shel'" in daemon.output, daemon.output
