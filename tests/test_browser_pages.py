"""The browser side without a browser: the status source on a fake clock,
and the pages turned off by ``[web] demo = false`` on an in-process daemon."""

from __future__ import annotations

from typing import Any

import pytest_twisted
import treq
from twisted.internet.task import Clock

from pushd.broker.memory import MemoryBroker
from pushd.model import Message
from pushd.registry import Registry
from pushd.sources.status import CHANNEL, StatusSource


class Recorder:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    def deliver(self, message: Message) -> None:
        self.messages.append(message)

    def reset(self, channel: str, cursor: str | None) -> None:
        raise AssertionError("no reset expected")

    def closed(self, channel: str) -> None:
        raise AssertionError("no close expected")


def test_status_source_publishes_counters_and_rates_while_someone_listens() -> None:
    clock = Clock()
    broker = MemoryBroker(clock)
    registry = Registry()
    source = StatusSource(broker, registry, clock)
    source.startService()
    clock.advance(3)
    assert broker.stats.published == 0  # nobody listens: nothing stored, nothing counted
    listener = Recorder()
    broker.subscribe(CHANNEL, listener)
    registry.opened("sse", object())
    registry.opened("ws", object())
    for n in range(4):
        broker.publish("ticker", n)
    registry.deliveries["ws"] += 8
    registry.dropped["stream"] += 1
    clock.advance(1)  # rates are over the last second
    clock.advance(1)
    first, second = (m.data for m in listener.messages)
    assert listener.messages[0].event == "status"
    assert first["connections"] == {"poll": 0, "longpoll": 0, "stream": 0, "sse": 1, "ws": 1}
    assert first["published"] == 4  # its own messages are not counted
    assert first["rates"]["published"] == 4.0 and first["rates"]["deliveries"]["ws"] == 8.0
    assert first["dropped"]["stream"] == 1
    assert second["published"] == 4 and second["rates"]["published"] == 0.0
    source.stopService()
    clock.advance(5)
    assert len(listener.messages) == 2


@pytest_twisted.ensureDeferred
async def test_demo_false_turns_the_pages_off_but_not_the_client(start_daemon: Any) -> None:
    def off(settings: Any) -> None:
        settings.web.demo = False

    running = start_daemon(off)
    for path in ("/", "/status", "/static/demo.js"):
        response = await treq.get(running.url + path)
        assert response.code == 404, path
        assert (await response.json())["error"] == "not_found"
    for path in ("/pushd.js", "/pushd.mjs", "/pushd.d.ts"):
        response = await treq.get(running.url + path)
        assert response.code == 200, path
        await response.content()
    assert not any((s.name or "").startswith("status:") for s in running.daemon)


@pytest_twisted.ensureDeferred
async def test_demo_page_is_on_by_default(running: Any) -> None:
    response = await treq.get(running.url + "/")
    assert response.code == 200
    assert b'<script src="/pushd.js"' in await response.content()
    assert any(s.name == "status:pushd.status" for s in running.daemon)
