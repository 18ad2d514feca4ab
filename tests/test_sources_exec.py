"""The exec source with real child processes (``sys.executable -c ...``).

Messages are awaited through a broker subscriber; backoff and the SIGKILL
grace period run on a ``task.Clock``, so nothing here waits on wall time.
"""

from __future__ import annotations

import os
import select
import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock

from pushd.broker.memory import MemoryBroker
from pushd.config import ConfigError
from pushd.sources import build
from pushd.sources.base import Backoff
from pushd.sources.exec import Exec
from tests.process import bounded
from tests.test_sources_base import Collector

FOREVER = "import time\nwhile True: time.sleep(60)\n"


def python(code: str) -> list[str]:
    return [sys.executable, "-u", "-c", code]


def gone(pid: int) -> bool:
    """True when no process (not even a zombie) has this pid."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def make(code: str, clock: Any = None, **kw: Any) -> tuple[Exec, Collector]:
    broker = MemoryBroker(reactor)
    collector = Collector(broker, "out")
    clock = clock or reactor
    source = Exec(broker, reactor, "out", python(code), clock=clock,
                  backoff=Backoff(clock, 1, 4, 10), **kw)
    return source, collector


@pytest_twisted.ensureDeferred
async def test_stdout_lines_become_messages_in_order() -> None:
    source, got = make("for i in range(5): print(f'line {i}')\n" + FOREVER)
    source.startService()
    try:
        await got.wait(5)
        assert got.data == [f"line {i}" for i in range(5)]
    finally:
        await bounded(source.stopService())
    assert source.published == 5


@pytest_twisted.ensureDeferred
async def test_json_format_skips_and_counts_bad_lines() -> None:
    code = "print('{\"a\": 1}'); print('not json'); print('[2]')\n" + FOREVER
    source, got = make(code, as_json=True)
    source.startService()
    try:
        await got.wait(2)
        assert got.data == [{"a": 1}, [2]]
        assert source.errors == 1
    finally:
        await bounded(source.stopService())


@pytest_twisted.ensureDeferred
async def test_crashing_child_is_restarted_with_backoff() -> None:
    clock = Clock()
    source, got = make("print('up'); raise SystemExit(3)", clock)
    ended = source.when_ended()
    source.startService()
    await got.wait(1)
    await bounded(ended)
    assert source.last_exit == "exited with status 3"
    assert source.restarts == 1
    assert [c.getTime() for c in clock.getDelayedCalls()] == [1.0]
    # Each further crash doubles the delay, up to backoff_max (4).
    for delay, expected_at in [(1, 3.0), (2, 7.0), (4, 11.0)]:
        ended = source.when_ended()
        clock.advance(delay)
        await bounded(ended)
        assert [c.getTime() for c in clock.getDelayedCalls()] == [expected_at]
    assert got.data == ["up"] * 4
    assert source.restarts == 4
    await bounded(source.stopService())
    assert clock.getDelayedCalls() == []  # the pending restart was cancelled


@pytest_twisted.ensureDeferred
async def test_stop_terminates_the_child() -> None:
    clock = Clock()
    source, got = make("print('ready')\n" + FOREVER, clock)
    source.startService()
    await got.wait(1)
    pid = source.pid
    assert pid is not None and not gone(pid)
    await bounded(source.stopService())
    assert gone(pid)
    assert source.last_exit == "killed by signal 15"
    assert clock.getDelayedCalls() == []  # no SIGKILL left pending, no restart


@pytest_twisted.ensureDeferred
async def test_stop_kills_a_child_that_ignores_sigterm() -> None:
    clock = Clock()
    code = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready')\n"
    source, got = make(code + FOREVER, clock, stop_timeout=5)
    source.startService()
    await got.wait(1)  # printed after SIG_IGN is in place
    pid = source.pid
    assert pid is not None
    stopped = source.stopService()
    assert [c.getTime() for c in clock.getDelayedCalls()] == [5.0]
    clock.advance(5)
    await bounded(stopped)
    assert gone(pid)
    assert source.last_exit == "killed by signal 9"


def exits(pid: int, within: float = 5.0) -> bool:
    """True once ``pid`` has exited (a zombie counts), waiting at most ``within``.

    Waits on a pidfd, which becomes readable when the process exits: the
    helper's pipe closes a moment before its exit completes, so a test that
    saw the pipe close still has to wait for that moment, on the event.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], within)[0])
    finally:
        os.close(fd)


# The command starts a helper that shares its output pipe (as a shell
# pipeline's members do), prints the helper's pid, then does ``rest``.
WITH_HELPER = (
    "import subprocess, sys\n"
    "helper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    "print(helper.pid)\n"
)


@pytest_twisted.ensureDeferred
async def test_stop_ends_what_the_command_started_too() -> None:
    clock = Clock()
    source, got = make(WITH_HELPER + FOREVER, clock)
    source.startService()
    await got.wait(1)
    helper = int(got.data[0])
    assert not exits(helper, 0)
    await bounded(source.stopService())  # the helper held the pipe: this waited for it
    assert exits(helper)
    assert source.last_exit == "killed by signal 15"
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_a_command_that_exits_leaving_a_helper_is_restarted_without_it() -> None:
    clock = Clock()
    source, got = make(WITH_HELPER + "raise SystemExit(3)\n", clock)
    ended = source.when_ended()
    source.startService()
    await got.wait(1)
    helper = int(got.data[0])
    await bounded(ended)  # the helper held the pipe; it got SIGTERM when the command exited
    assert exits(helper)
    assert source.last_exit == "exited with status 3"
    assert [c.getTime() for c in clock.getDelayedCalls()] == [1.0]  # the restart
    await bounded(source.stopService())


@pytest_twisted.ensureDeferred
async def test_stderr_is_logged_not_published() -> None:
    source, got = make("import sys\nsys.stderr.write('oops\\n'); print('out')\n" + FOREVER)
    source.startService()
    try:
        await got.wait(1)
        assert got.data == ["out"]
    finally:
        await bounded(source.stopService())


def test_config_errors_name_the_key() -> None:
    broker = MemoryBroker(Clock())

    def build_exec(**table: Any) -> Any:
        return build({"type": "exec", **table}, broker, Clock())

    with pytest.raises(ConfigError, match="command is required"):
        build_exec(channel="x")
    with pytest.raises(ConfigError, match="channel is required"):
        build_exec(command=["true"])
    with pytest.raises(ConfigError, match="'no-such-program-xyz' is not an executable"):
        build_exec(channel="x", command=["no-such-program-xyz"])
    with pytest.raises(ConfigError, match="command has the wrong type"):
        build_exec(channel="x", command="echo hi")  # a string would need a shell
    with pytest.raises(ConfigError, match="format must be one of"):
        build_exec(channel="x", command=["true"], format="yaml")
    with pytest.raises(ConfigError, match="unknown setting 'shell'"):
        build_exec(channel="x", command=["true"], shell=True)
    source = build_exec(channel="x", command=["true"], backoff_initial=0.5, backoff_max=2)
    assert isinstance(source, Exec) and source.backoff.maximum == 2
