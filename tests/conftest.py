"""Shared fixtures: an in-process daemon on a real 127.0.0.1 port."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import reactor

from pushd.config import Settings
from pushd.tap import Daemon


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


@pytest.fixture
def start_daemon() -> Any:
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
        daemon = Daemon(settings, reactor)
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
