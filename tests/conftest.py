"""Shared fixtures: an in-process daemon on a real 127.0.0.1 port."""

from __future__ import annotations

import functools
import itertools
import os
import secrets
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import reactor

from pushd.broker.memory import MemoryBroker
from pushd.config import Settings
from pushd.tap import Daemon
from tests.later_broker import LaterBroker
from tests.redis_server import redis, redis_server  # noqa: F401  (fixtures)


class Running:
    """A started Daemon and the URL it answers on."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        port = daemon.listeners[0].port
        assert port is not None
        self.port = port.getHost().port
        self.url = f"http://127.0.0.1:{self.port}"
        self.broker = daemon.broker
        self.registry = daemon.registry


BROKERS = {"memory": MemoryBroker, "later": LaterBroker, "redis": None}  # redis: see below
_daemons = itertools.count()


def redis_broker(request: Any) -> Any:
    """A RedisBroker class for one daemon: the session's redis-server, keys
    and pub/sub channels under a prefix of its own (pub/sub ignores the db)."""
    from pushd.broker.redis import RedisBroker

    server = request.getfixturevalue("redis_server")
    return functools.partial(
        RedisBroker, url=f"redis://127.0.0.1:{server.port}/0",
        prefix=f"t{os.getpid()}.{next(_daemons)}:", linger=0.0, epoch=secrets.token_hex(4),
    )


def pytest_generate_tests(metafunc: Any) -> None:
    """Tests marked ``both_brokers`` run against a broker that answers at once,
    one that answers every call on a later turn, and the Redis broker."""
    marker = metafunc.definition.get_closest_marker("both_brokers")
    if "broker_kind" in metafunc.fixturenames and marker is not None:
        # ``both_brokers(redis=False)``: a test that reaches into the memory broker
        kinds = [kind for kind in BROKERS if marker.kwargs.get(kind, True)]
        metafunc.parametrize("broker_kind", kinds, indirect=True)


@pytest.fixture
def broker_kind(request: Any) -> str:
    """Which broker class daemons of this test use (``memory`` unless parametrized)."""
    return getattr(request, "param", "memory")  # type: ignore[no-any-return]


@pytest.fixture
def start_daemon(broker_kind: str, request: Any) -> Any:
    """Call with a function that edits Settings; returns a Running daemon.

    No sources run unless the edit adds some; the listener is tcp:0.
    """
    started: list[Daemon] = []

    def start(edit: Callable[[Settings], None] | None = None) -> Running:
        settings = Settings()
        settings.listen = ["tcp:0:interface=127.0.0.1"]
        settings.sources = []
        settings.drain.timeout = 1  # stopping drains: do not wait long on a stuck client
        if edit is not None:
            edit(settings)
        broker_class = BROKERS[broker_kind] or redis_broker(request)
        if settings.broker != "memory":  # the test names a broker: the daemon makes it
            broker_class = None
        daemon = Daemon(settings, reactor, broker_class=broker_class)
        daemon.startService()
        started.append(daemon)
        return Running(daemon)

    yield start
    for daemon in started:
        if daemon.running:
            pytest_twisted.blockon(daemon.stopService())


@pytest.fixture
def running(start_daemon: Any) -> Running:
    """A daemon with default settings and no sources."""
    return start_daemon()  # type: ignore[no-any-return]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Any:
    """Under CI (``CI=true``, set by .ci/run) a skipped test is a failure.

    Tests skip only when a program they drive (redis-server, nginx, chromium)
    is missing; CI installs all of them, so a skip there means a missing
    install step, which must not hide behind a green run.
    """
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI (an install step is missing?): {report.longrepr}"
