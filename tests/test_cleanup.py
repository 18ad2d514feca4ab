"""A client that goes away is unsubscribed at once: nothing leaks."""

from __future__ import annotations

import gc
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.web.server import Request

from tests.clients import RawHTTP, get_request, subscribed


def gone(connection: Any) -> Deferred[None]:
    """Fires when the server side of a held request or stream has ended."""
    d: Deferred[Any] = getattr(connection, "answer", None) or connection.when_ended()
    ended: Deferred[None] = Deferred()
    d.addBoth(lambda _: ended.callback(None))
    return ended.addTimeout(10, reactor)


@pytest.mark.parametrize(
    ("transport", "path"),
    [
        ("longpoll", "/channels/c/longpoll"),
        ("stream", "/channels/c/stream"),
        ("sse", "/channels/c/events"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_disconnect_unsubscribes(running: Any, transport: str, path: str) -> None:
    clients = [await RawHTTP.open(running.port, get_request(path)) for _ in range(3)]
    await subscribed(running.broker, "c", 3)
    assert running.registry.count(transport) == 3
    held = list(running.registry.connections[transport])
    for client in clients:
        client.abort()
    for connection in held:
        await gone(connection)
    assert running.broker.subscribers("c") == 0
    assert running.registry.count(transport) == 0
    assert running.broker.channel_count() == 0  # the empty channel was freed too


@pytest_twisted.ensureDeferred
async def test_an_open_stream_holds_no_request(running: Any) -> None:
    """SSE and NDJSON streams take their connection over after the headers:
    while they stay open, no twisted.web Request (nor its headers and
    Deferreds) stays alive for them."""

    clients = [
        await RawHTTP.open(running.port, get_request(path))
        for path in ("/channels/c/events", "/channels/c/stream")
    ]
    await subscribed(running.broker, "c", 2)
    # subscribed() can fire inside the route's own call; let that stack unwind
    await deferLater(reactor, 0, lambda: None)
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, Request)]
    assert alive == []
    mid = (await running.broker.publish("c", {"n": 1})).id
    for client in clients:
        await client.contains(mid.encode())
        client.abort()
