"""systemd, for real: the unit files verify, socket activation serves SSE on the
inherited socket, and the notify protocol says READY=1, WATCHDOG=1 and STOPPING=1.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol

from pushd.systemd import notify, watchdog_interval
from tests.clients import RawHTTP, get_request
from tests.test_ops_support import ROOT, bounded, free_port, post, spawn_pushd, stop

ANALYZE = shutil.which("systemd-analyze")
ACTIVATE = shutil.which("systemd-socket-activate")


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_unit_files_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart's program exists; point it at this venv's twistd.
    twistd = Path(sys.executable).parent / "twistd"
    assert twistd.exists()
    service = (ROOT / "etc/pushd.service").read_text()
    assert "/opt/pushd/bin/twistd" in service
    (tmp_path / "pushd.service").write_text(service.replace("/opt/pushd/bin/twistd", str(twistd)))
    shutil.copy(ROOT / "etc/pushd.socket", tmp_path / "pushd.socket")
    result = subprocess.run(
        [ANALYZE, "verify", str(tmp_path / "pushd.socket"), str(tmp_path / "pushd.service")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    for line in ("Type=notify", "DynamicUser=yes", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "Restart=on-failure", "LimitNOFILE=",
                 "systemd:domain=INET:index=0"):
        assert line in service


def test_notify_reaches_a_path_socket_and_an_abstract_one(tmp_path: Path) -> None:
    path = f"/tmp/pushd-notify-{os.getpid()}"  # tmp_path may be longer than sun_path allows
    abstract = f"pushd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as a, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as b:
        a.bind(path)
        b.bind(b"\0" + abstract.encode())
        assert notify("READY=1", {"NOTIFY_SOCKET": path})
        assert notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + abstract})
        a.setblocking(False)
        b.setblocking(False)
        assert a.recv(100) == b"READY=1"
        assert b.recv(100) == b"STOPPING=1"
    os.unlink(path)
    assert not notify("READY=1", {})  # not under systemd: nothing to do
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")})  # logged, not raised
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None


class Datagrams(DatagramProtocol):
    """Collects notify datagrams; fires a Deferred when one holds a given line."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self._waiting: list[tuple[bytes, Deferred[None]]] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received.append(data)
        for entry in list(self._waiting):
            if entry[0] in data.split(b"\n"):
                self._waiting.remove(entry)
                entry[1].callback(None)

    def wait_for(self, line: bytes) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if any(line in data.split(b"\n") for data in self.received):
            d.callback(None)
        else:
            self._waiting.append((line, d))
        return bounded(d)

    def lines(self) -> list[bytes]:
        return [line for data in self.received for line in data.split(b"\n")]


@pytest_twisted.ensureDeferred
async def test_daemon_says_ready_pings_the_watchdog_and_says_stopping(tmp_path: Path) -> None:
    # An abstract socket, as systemd itself uses: tmp_path is too long for sun_path.
    name = f"pushd-test-notify-{os.getpid()}"
    datagrams = Datagrams()
    port = reactor.listenUNIXDatagram("\0" + name, datagrams)
    child, process = spawn_pushd(
        tmp_path, "--listen", "tcp:0:interface=127.0.0.1",
        env={"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "200000"},
    )
    try:
        await datagrams.wait_for(b"READY=1")
        # READY=1 comes once the listener is up: the port is in the log by now.
        assert b"PushdSite starting on" in child.output
        assert b"STOPPING=1" not in datagrams.lines()
        await datagrams.wait_for(b"WATCHDOG=1")
        process.signalProcess("TERM")
        await datagrams.wait_for(b"STOPPING=1")
        assert await bounded(child.exited) == (0, None), child.log()
    finally:
        stop(child, process)
        await port.stopListening()
    lines = datagrams.lines()
    assert lines.index(b"READY=1") < lines.index(b"STOPPING=1")


@pytest.mark.skipif(ACTIVATE is None, reason="systemd-socket-activate is not installed")
@pytest_twisted.ensureDeferred
async def test_socket_activation_serves_sse_on_the_inherited_socket(tmp_path: Path) -> None:
    assert ACTIVATE is not None
    port = free_port()
    child, process = spawn_pushd(
        tmp_path, "--listen", "systemd:domain=INET:index=0",
        # --fdname: real systemd always sets LISTEN_FDNAMES, and Twisted
        # ignores inherited sockets without it. -E: the tool passes on no
        # other environment by itself.
        prefix=[ACTIVATE, "-l", f"127.0.0.1:{port}", "--fdname=pushd.socket", "-E", "PYTHONPATH"],
    )
    try:
        await child.wait_for(rb"Listening on 127\.0\.0\.1:%d" % port)
        # systemd-socket-activate holds the socket and starts pushd on the
        # first connection: this very request is what starts the daemon.
        sse = await RawHTTP.open(port, get_request("/channels/act/events"))
        await bounded(sse.contains(b"retry:"))
        assert sse.data.startswith(b"HTTP/1.1 200"), sse.data
        await child.wait_for(rb"pushd ready: systemd:domain=INET:index=0")
        code, _ = await post(f"http://127.0.0.1:{port}/channels/act", b'"activated"')
        assert code == 201
        await bounded(sse.contains(b"data: \"activated\""))
        process.signalProcess("TERM")
        assert await bounded(child.exited) == (0, None), child.log()
        await bounded(sse.until(lambda _: sse.ended))
    finally:
        stop(child, process)
