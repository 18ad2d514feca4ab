"""A reader that never reads: bounded memory, dropped, and nobody else waits."""

from __future__ import annotations

import socket
import zlib
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.clients import Collector, RawHTTP, dechunk, get_request, split_response, subscribed

QUEUE = 64 * 1024


pytestmark = pytest.mark.both_brokers


def stuck_client(port: int, path: str) -> socket.socket:
    """A TCP client with a tiny receive window that sends a request and never reads."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(get_request(path))
    return s


@pytest.mark.parametrize(("transport", "path"), [("sse", "events"), ("stream", "stream")])
@pytest_twisted.ensureDeferred
async def test_a_reader_that_never_reads_is_bounded_then_dropped(
    start_daemon: Any, transport: str, path: str
) -> None:
    def edit(s: Any) -> None:
        s.limits.queue = QUEUE
        s.history.size = 5000

    running = start_daemon(edit)
    stuck = stuck_client(running.port, f"/channels/c/{path}")
    await subscribed(running.broker, "c")
    (slow,) = running.registry.connections[transport]
    healthy = await Collector.get(
        running.url + f"/channels/c/{path}", headers={"Accept-Encoding": "identity"}
    )
    await subscribed(running.broker, "c", 2)

    payload = "x" * 10_000
    published = []
    # At most 40 MB: the stuck client must be dropped long before that.
    for i in range(4000):
        message = await running.broker.publish("c", payload)
        published.append(message.id)
        assert slow.outlet.queued <= QUEUE  # what waits for it stays bounded
        if running.registry.dropped[transport]:
            break
        if i % 4 == 0:
            await deferLater(reactor, 0, lambda: None)  # let the reactor write
    assert running.registry.dropped[transport] == 1
    assert slow.ended
    assert running.broker.subscribers("c") == 1  # only the healthy one remains
    for _ in range(5):
        published.append((await running.broker.publish("c", "after")).id)
    await healthy.contains(published[-1].encode())
    got = [line for line in healthy.data.split(b"\n") if line.startswith((b"id: ", b'{"type"'))]
    assert len(got) == len(published)  # the healthy reader missed nothing
    stuck.close()


@pytest_twisted.ensureDeferred
async def test_gzip_stream_flushes_every_message(running: Any) -> None:
    raw = await RawHTTP.open(
        running.port, get_request("/channels/z/stream", "Accept-Encoding: gzip")
    )
    await subscribed(running.broker, "z")
    await raw.contains(b"\r\n\r\n")
    assert split_response(raw.data)[1]["content-encoding"] == "gzip"

    def text() -> bytes:
        chunks, _ = dechunk(split_response(raw.data)[2])
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(b"".join(chunks))

    for i in range(5):
        message = await running.broker.publish("z", {"i": i})
        # Readable from the decompressor now, before any later message exists.
        needle = message.id.encode()
        await raw.until(lambda _, needle=needle: needle in text())
    assert text().count(b"\n") == 5
    raw.close()
