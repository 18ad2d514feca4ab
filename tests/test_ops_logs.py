"""Logs: ``twistd --logger pushd.logs.json_logger`` writes one JSON object a line,
with the level from ``$PUSHD_LOG_LEVEL`` and the event's own fields (peer, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from pushd.logs import event_as_dict
from tests.clients import RawHTTP, get_request
from tests.test_ops_support import bounded, spawn_pushd, stop


def records(output: bytes) -> list[dict[str, Any]]:
    """Every line must be a JSON object: a shipper reads nothing else."""
    return [json.loads(line) for line in output.decode().splitlines() if line.strip()]


@pytest_twisted.ensureDeferred
async def test_json_lines_with_connection_debug_lines(tmp_path: Path) -> None:
    child, process = spawn_pushd(
        tmp_path, "--listen", "tcp:0:interface=127.0.0.1",
        logger="pushd.logs.json_logger", env={"PUSHD_LOG_LEVEL": "debug"},
    )
    try:
        match = await child.wait_for(rb'"message":"PushdSite starting on (\d+)"')
        port = int(match.group(1))
        await child.wait_for(rb'"message":"pushd ready')
        client = await RawHTTP.open(port, get_request("/healthz", "Connection: close"))
        await bounded(client.until(lambda _: client.ended))
        await child.wait_for(rb'"message":"connection closed from 127.0.0.1"')
        process.signalProcess("TERM")
        assert await bounded(child.exited) == (0, None), child.log()
    finally:
        stop(child, process)
    logged = records(child.output)
    opened = [r for r in logged if r["message"] == "connection opened from 127.0.0.1"]
    assert opened and opened[0]["level"] == "debug" and opened[0]["peer"] == "127.0.0.1"
    assert opened[0]["namespace"] == "pushd.server.protocol"
    ready = next(r for r in logged if r["message"].startswith("pushd ready"))
    assert ready["level"] == "info" and ready["time"].endswith("+00:00")
    assert any(r["message"] == "drain: every client has gone" for r in logged)


@pytest_twisted.ensureDeferred
async def test_info_level_by_default_leaves_out_debug(tmp_path: Path) -> None:
    child, process = spawn_pushd(tmp_path, "--listen", "tcp:0:interface=127.0.0.1",
                                 logger="pushd.logs.json_logger")
    try:
        port = int((await child.wait_for(rb'starting on (\d+)')).group(1))
        client = await RawHTTP.open(port, get_request("/healthz", "Connection: close"))
        await bounded(client.until(lambda _: client.ended))
        process.signalProcess("TERM")
        assert await bounded(child.exited) == (0, None), child.log()
    finally:
        stop(child, process)
    logged = records(child.output)
    assert logged and all(r["level"] != "debug" for r in logged)
    assert any(r["message"] == "SIGTERM: draining" for r in logged)


def test_a_failure_becomes_a_traceback_field() -> None:
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        failure = Failure()
    record = event_as_dict({
        "log_format": "source {source} failed", "log_level": LogLevel.error,
        "log_namespace": "pushd.sources", "log_time": 0.0, "source": "exec:x",
        "log_failure": failure, "channel": "logs", "obj": object(),
    })
    assert record["message"] == "source exec:x failed"
    assert record["level"] == "error" and record["channel"] == "logs"
    assert "ZeroDivisionError" in record["traceback"]
    assert "obj" not in record  # only plain values
    json.dumps(record)
