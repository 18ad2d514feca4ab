"""A config file with one source of each type, under a real ``twistd -n pushd``.

The daemon is a child process; the test learns its port from its log
(``tcp:0``), asks ``/healthz`` with treq, sends SIGTERM and expects exit
status 0, every source's start-up line, no traceback, and no orphaned exec
child. Everything waits on Deferreds fired by the child's output or exit.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest_twisted
import treq

from tests.process import bounded, free_port, spawn_pushd, started_port


@pytest_twisted.ensureDeferred
async def test_every_source_type_starts_and_stops_under_twistd(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("")
    script = "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.5)\n"
    config = f"""
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
url = "http://127.0.0.1:{free_port()}/events"
format = "sse"
backoff_initial = 0.2

[[source]]
type = "redis"
endpoint = "tcp:host=127.0.0.1:port={free_port()}"
channels = ["news"]
channel = "redis.{{channel}}"
backoff_initial = 0.2
"""
    daemon, process = spawn_pushd(tmp_path, "--listen", "tcp:0:interface=127.0.0.1", config=config)
    try:
        port = await started_port(daemon)
        child = int(
            (await daemon.wait_for(rb"source exec:exec-out: started \S+ \(pid (\d+)\)")).group(1)
        )
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
    config = '[[source]]\ntype = "exec"\nchannel = "x"\ncommand = ["true"]\nshel = 1\n'
    daemon, _ = spawn_pushd(tmp_path, "--listen", "tcp:0:interface=127.0.0.1", config=config)
    status, _ = await bounded(daemon.exited, 30)
    assert status != 0
    assert b"[[source]] exec: unknown setting 'shel'" in daemon.output, daemon.output
