"""Signals a real ``twistd -n pushd`` gets from its supervisor: SIGHUP is
logged and survived (DESIGN "Every byte bounded"); SIGTERM is in test_ops_drain.
"""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from tests.test_ops_support import bounded, get, spawn_pushd, started_port, stop


@pytest_twisted.ensureDeferred
async def test_sighup_is_logged_and_the_daemon_keeps_serving(tmp_path: Path) -> None:
    child, process = spawn_pushd(tmp_path, "--listen", "tcp:0:interface=127.0.0.1")
    try:
        port = await started_port(child)
        url = f"http://127.0.0.1:{port}"
        await child.wait_for(rb"pushd ready")  # the reactor runs: our handlers are in
        process.signalProcess("HUP")
        await child.wait_for(rb"SIGHUP")
        code, _, body = await get(f"{url}/healthz")
        assert code == 200, body
        process.signalProcess("HUP")  # and again: nothing accumulates
        await child.wait_for(rb"SIGHUP(.|\n)*SIGHUP")
        code, _, _ = await get(f"{url}/healthz")
        assert code == 200
        assert not child.exited.called
        process.signalProcess("TERM")  # still drains and exits 0 as usual
        assert await bounded(child.exited) == (0, None), child.log()
    finally:
        stop(child, process)
