"""The parts every source shares: settings checks, backoff, line splitting.

``Collector`` is the test subscriber the other source tests use: it turns
"a message was published" into a Deferred, so no test waits by sleeping.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from pushd.broker.memory import MemoryBroker
from pushd.config import ConfigError
from pushd.model import Message
from pushd.sources import build
from pushd.sources.base import Backoff, LineBuffer, Restarting, Settings

TIMEOUT = 10.0


class Collector:
    """A broker subscriber that records messages and fires on a count."""

    def __init__(self, broker: MemoryBroker, channel: str) -> None:
        self.messages: list[Message] = []
        self._waiting: list[tuple[int, Deferred[list[Message]]]] = []
        self.subscription = broker.subscribe(channel, self)

    @property
    def data(self) -> list[Any]:
        return [m.data for m in self.messages]

    def deliver(self, message: Message) -> None:
        self.messages.append(message)
        still = []
        for n, d in self._waiting:
            if len(self.messages) >= n:
                d.callback(self.messages[:n])
            else:
                still.append((n, d))
        self._waiting = still

    def reset(self, channel: str, cursor: str | None) -> None:
        pass

    def closed(self, channel: str) -> None:
        pass

    def wait(self, n: int, timeout: float = TIMEOUT) -> Deferred[list[Message]]:
        """Fires once ``n`` messages have arrived in all (fails after ``timeout``)."""
        d: Deferred[list[Message]] = Deferred()
        if len(self.messages) >= n:
            d.callback(self.messages[:n])
        else:
            self._waiting.append((n, d))
            d.addTimeout(timeout, reactor)
        return d


# -- Backoff ------------------------------------------------------------------
def test_backoff_doubles_up_to_the_cap() -> None:
    clock = Clock()
    b = Backoff(clock, initial=1, maximum=5, healthy=10)
    delays = []
    for _ in range(5):
        b.started()
        delays.append(b.next_delay())
    assert delays == [1, 2, 4, 5, 5]


def test_backoff_resets_after_a_healthy_run() -> None:
    clock = Clock()
    b = Backoff(clock, initial=1, maximum=30, healthy=10)
    for _ in range(3):
        b.started()
        b.next_delay()
    b.started()
    clock.advance(9)
    assert b.next_delay() == 8  # too short to count as healthy
    b.started()
    clock.advance(10)
    assert b.next_delay() == 1


class _Flaky(Restarting):
    """A session that ends as soon as it is told to, for driving the cycle."""

    def __init__(self, broker: MemoryBroker, clock: Clock) -> None:
        super().__init__(broker, "flaky", clock, Backoff(clock, 1, 4, 10))
        self.runs = 0
        self.current: Deferred[str] | None = None

    def run(self) -> Deferred[str]:
        self.runs += 1
        self.current = Deferred()
        return self.current

    def halt(self) -> None:
        assert self.current is not None
        self.current.callback("halted")


def test_restarting_retries_on_the_clock_and_stops_cleanly() -> None:
    clock = Clock()
    source = _Flaky(MemoryBroker(clock), clock)
    source.startService()
    assert source.runs == 1
    source.current.callback("ended")  # type: ignore[union-attr]
    assert source.restarts == 1
    assert [c.getTime() for c in clock.getDelayedCalls()] == [1.0]
    clock.advance(1)
    assert source.runs == 2
    source.current.errback(RuntimeError("boom"))  # type: ignore[union-attr]
    assert [c.getTime() for c in clock.getDelayedCalls()] == [3.0]
    stopped = source.stopService()
    assert stopped.called  # no session: nothing to wait for
    assert clock.getDelayedCalls() == []  # the pending retry was cancelled


def test_restarting_stop_waits_for_the_session() -> None:
    clock = Clock()
    source = _Flaky(MemoryBroker(clock), clock)
    source.startService()
    stopped = source.stopService()
    assert stopped.called  # _Flaky.halt ends the session synchronously
    assert source.restarts == 0 and clock.getDelayedCalls() == []


# -- LineBuffer ----------------------------------------------------------------
def test_line_buffer_splits_across_chunks_and_crlf() -> None:
    lb = LineBuffer()
    assert lb.feed(b"a\r\nb") == [b"a"]
    assert lb.feed(b"c\nd") == [b"bc"]
    assert lb.flush() == b"d"
    assert lb.flush() is None


def test_line_buffer_drops_overlong_lines() -> None:
    lb = LineBuffer(limit=4)
    assert lb.feed(b"12345678") == []
    assert lb.feed(b"90\nok\n") == [b"ok"]
    assert lb.overflowed == 1


# -- Settings and the registry -------------------------------------------------
def test_unknown_type_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="'nope' is not one of: exec, file, http, redis"):
        build({"type": "nope"}, MemoryBroker(Clock()), Clock())


def test_settings_names_the_key() -> None:
    s = Settings({"type": "x", "format": "xml", "command": ["a", 1]})
    with pytest.raises(ConfigError, match="format must be one of text, json, not 'xml'"):
        s.choice("format", ("text", "json"), "text")
    with pytest.raises(ConfigError, match="command must be a list of strings"):
        s.strings("command")
    with pytest.raises(ConfigError, match="backoff_max must be at least backoff_initial"):
        Settings({"type": "x", "backoff_initial": 5, "backoff_max": 1}).backoff(Clock())
