"""Heartbeats and long-poll timeouts on a fake clock, through StubTreq."""

from __future__ import annotations

import json
from typing import Any

import treq
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pushd.broker.memory import MemoryBroker
from pushd.config import Settings
from pushd.registry import Registry
from pushd.web.app import PushdApp
from pushd.web.context import Context

check = SynchronousTestCase()


def build(edit: Any = None) -> tuple[StubTreq, Clock, MemoryBroker, Registry]:
    clock = Clock()
    clock.advance(1_700_000_000)
    settings = Settings()
    settings.sources = []
    if edit:
        edit(settings)
    broker = MemoryBroker(clock, epoch="ep")
    registry = Registry()
    app = PushdApp(Context(broker, settings, clock, registry))
    return StubTreq(app.resource()), clock, broker, registry


def open_stream(stub: StubTreq, clock: Clock, url: str) -> list[bytes]:
    chunks: list[bytes] = []
    d = stub.get(url)
    stub.flush()
    response = check.successResultOf(d)
    treq.collect(response, chunks.append)
    clock.advance(0)  # the end of the turn, when outlets send what they hold
    stub.flush()
    return chunks


def test_sse_heartbeat_comment_on_the_configured_interval() -> None:
    def edit(s: Settings) -> None:
        s.sse.heartbeat = 5

    stub, clock, _, _ = build(edit)
    chunks = open_stream(stub, clock, "http://localhost/channels/c/events")
    assert b"".join(chunks) == b"retry: 3000\n\n"
    clock.advance(4.9)
    stub.flush()
    assert b"".join(chunks) == b"retry: 3000\n\n"
    clock.advance(0.1)
    stub.flush()
    assert b"".join(chunks) == b"retry: 3000\n\n:\n\n"
    clock.advance(5)
    stub.flush()
    assert b"".join(chunks).count(b":\n\n") == 2


def test_stream_heartbeat_is_a_bare_newline() -> None:
    def edit(s: Settings) -> None:
        s.stream.heartbeat = 2

    stub, clock, _, _ = build(edit)
    chunks = open_stream(stub, clock, "http://localhost/channels/c/stream")
    assert b"".join(chunks) == b""
    clock.advance(2)
    stub.flush()
    assert b"".join(chunks) == b"\n"


def test_longpoll_timeout_answers_with_the_same_cursor() -> None:
    stub, clock, broker, registry = build()
    mid = check.successResultOf(broker.publish("c", "x")).id
    d = stub.get(f"http://localhost/channels/c/longpoll?since={mid}&timeout=7")
    stub.flush()
    check.assertNoResult(d)
    assert registry.count("longpoll") == 1
    clock.advance(6.9)
    stub.flush()
    check.assertNoResult(d)
    clock.advance(0.1)
    stub.flush()
    response = check.successResultOf(d)
    assert response.code == 200
    body = check.successResultOf(response.content())
    assert json.loads(body) == {"messages": [], "cursor": mid}
    assert broker.subscribers("c") == 0
    assert registry.count("longpoll") == 0


def test_longpoll_default_and_capped_timeout() -> None:
    stub, clock, _, _ = build()
    d = stub.get("http://localhost/channels/c/longpoll?timeout=100000")
    stub.flush()
    clock.advance(119)
    stub.flush()
    check.assertNoResult(d)
    clock.advance(1)  # capped at [longpoll] max_timeout = 120
    stub.flush()
    assert check.successResultOf(d).code == 200

    d = stub.get("http://localhost/channels/c/longpoll")
    stub.flush()
    clock.advance(29)
    stub.flush()
    check.assertNoResult(d)
    clock.advance(1)  # the default, 30 s
    stub.flush()
    assert check.successResultOf(d).code == 200


def test_a_message_answers_a_held_longpoll_before_the_timeout() -> None:
    stub, clock, broker, _ = build()
    d = stub.get("http://localhost/channels/c/longpoll?timeout=10")
    stub.flush()
    message = check.successResultOf(broker.publish("c", {"v": 1}))
    stub.flush()
    body = json.loads(check.successResultOf(check.successResultOf(d).content()))
    assert [m["id"] for m in body["messages"]] == [message.id]
    assert clock.getDelayedCalls() == []  # the timeout timer was cancelled
