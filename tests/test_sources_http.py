"""The http source against a real upstream: a twisted.web resource on 127.0.0.1.

The network is real; the source's clock (backoff, silence timeout) is a
``task.Clock``, so each reconnection happens exactly when the test advances
it, and waiting is always on a Deferred: a request reaching the upstream,
a message reaching the broker, a session ending.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from pushd.broker.memory import MemoryBroker
from pushd.config import ConfigError
from pushd.sources import build
from pushd.sources.base import Backoff
from pushd.sources.http import HttpSource, SSEParser
from tests.process import bounded
from tests.test_sources_base import Collector


class Upstream(Resource):
    """Streams ``/ndjson``, ``/sse`` (an event log honouring Last-Event-ID), else 404."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.open: list[Request] = []
        self.seen: list[Request] = []
        self.events: list[bytes] = []  # SSE frames; event i has id i + 1
        self._arrivals: list[Deferred[Request]] = []

    def next_request(self) -> Deferred[Request]:
        d: Deferred[Request] = Deferred()
        self._arrivals.append(d)
        return bounded(d)

    def render_GET(self, request: Request) -> Any:
        if request.path not in (b"/ndjson", b"/sse"):
            request.setResponseCode(404)
            return b"no such stream\n"
        sse = request.path == b"/sse"
        request.setHeader("content-type", "text/event-stream" if sse else "application/x-ndjson")
        request.write(b"")  # headers now, like a real streaming server
        self.open.append(request)
        self.seen.append(request)
        request.notifyFinish().addBoth(lambda _: self.open.remove(request))
        if sse:
            last = request.getHeader("last-event-id")
            for frame in self.events[int(last) if last else 0:]:
                request.write(frame)
        arrivals, self._arrivals = self._arrivals, []
        for d in arrivals:
            d.callback(request)
        return NOT_DONE_YET

    def add_event(self, frame: bytes) -> None:
        self.events.append(frame)
        for request in self.open:
            request.write(frame)

    def drop_all(self) -> None:
        for request in list(self.open):
            request.transport.abortConnection()


class Server:
    def __init__(self) -> None:
        self.resource = Upstream()
        self.site = Site(self.resource)
        self.port: Any = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.number = self.port.getHost().port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.number}{path}"

    async def stop(self) -> None:
        await self.port.stopListening()
        self.resource.drop_all()

    def restart(self) -> None:
        self.port = reactor.listenTCP(self.number, self.site, interface="127.0.0.1")


@pytest.fixture
def upstream() -> Any:
    server = Server()
    yield server
    server.resource.drop_all()
    pytest_twisted.blockon(server.port.stopListening())


def make(url: str, **kw: Any) -> tuple[HttpSource, Collector, Clock]:
    clock = Clock()
    broker = MemoryBroker(clock)
    got = Collector(broker, "relay")
    source = HttpSource(broker, reactor, "relay", url, clock=clock,
                        backoff=Backoff(clock, 1, 8, 10), **kw)
    return source, got, clock


@pytest_twisted.ensureDeferred
async def test_ndjson_lines_and_reconnect_after_the_upstream_ends(upstream: Server) -> None:
    source, got, clock = make(upstream.url("/ndjson"), format="ndjson")
    arrived = upstream.resource.next_request()
    source.startService()
    request = await arrived
    request.write(b'{"n": 1}\n\n{"n"')
    request.write(b': 2}\r\nnot json\n')
    await got.wait(2)
    ended = source.when_ended()
    request.finish()  # the upstream closes: the source retries after backoff_initial
    await bounded(ended)
    assert source.errors == 1 and source.restarts == 1
    assert [c.getTime() for c in clock.getDelayedCalls()] == [1.0]
    arrived = upstream.resource.next_request()
    clock.advance(1)
    request = await arrived
    request.write(b'{"n": 3}\n')
    await got.wait(3)
    assert got.data == [{"n": 1}, {"n": 2}, {"n": 3}]
    await bounded(source.stopService())


@pytest_twisted.ensureDeferred
async def test_sse_events_and_resume_after_an_upstream_restart(upstream: Server) -> None:
    res = upstream.resource
    res.events = [
        b"retry: 100\n: a comment\nid: 1\ndata: one\n\n",
        b"id: 2\nevent: greet\ndata: a\r\ndata: b\r\n\r\n",
    ]
    source, got, clock = make(upstream.url("/sse"), format="sse")
    arrived = res.next_request()
    source.startService()
    first = await arrived
    assert first.getHeader("last-event-id") is None
    await got.wait(2)
    res.add_event(b"id: 3\nevent: reset\ndata: three\n\n")  # reserved name: sent as message
    await got.wait(3)

    ended = source.when_ended()
    await upstream.stop()  # the upstream goes away...
    await bounded(ended)
    res.events.append(b"id: 4\ndata: four\n\n")  # ...and has news when it is back
    ended = source.when_ended()
    clock.advance(1)  # first retry: refused
    await bounded(ended)
    assert [c.getTime() for c in clock.getDelayedCalls()] == [3.0]
    upstream.restart()
    arrived = res.next_request()
    clock.advance(2)
    again = await arrived
    assert again.getHeader("last-event-id") == "3"
    await got.wait(4)
    res.add_event(b"id: 5\ndata: five\n\n")
    await got.wait(5)
    assert got.data == ["one", "a\nb", "three", "four", "five"]  # no duplicate, no gap
    assert [m.event for m in got.messages] == ["message", "greet", "message", "message",
                                               "message"]
    assert source.restarts == 2
    await bounded(source.stopService())


@pytest_twisted.ensureDeferred
async def test_sse_json_data_and_bad_data(upstream: Server) -> None:
    res = upstream.resource
    res.events = [b'data: {"a": 1}\n\n', b"data: {oops\n\n", b"data: [2]\n\n"]
    source, got, _ = make(upstream.url("/sse"), format="sse", data_json=True)
    source.startService()
    await got.wait(2)
    assert got.data == [{"a": 1}, [2]]
    assert source.errors == 1
    await bounded(source.stopService())


@pytest_twisted.ensureDeferred
async def test_silence_past_the_timeout_reconnects(upstream: Server) -> None:
    source, _, clock = make(upstream.url("/ndjson"), timeout=5)
    connected = source.when_connected()
    source.startService()
    await bounded(connected)
    ended = source.when_ended()
    clock.advance(5)  # nothing for 5 seconds: the source hangs up and retries
    await bounded(ended)
    assert source.restarts == 1
    await bounded(source.stopService())


@pytest_twisted.ensureDeferred
async def test_a_non_200_answer_is_retried(upstream: Server) -> None:
    source, _, clock = make(upstream.url("/missing"))
    ended = source.when_ended()
    source.startService()
    await bounded(ended)
    assert source.errors == 1 and source.restarts == 1
    assert [c.getTime() for c in clock.getDelayedCalls()] == [1.0]
    await bounded(source.stopService())
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_stop_while_streaming_closes_the_connection(upstream: Server) -> None:
    source, _, _ = make(upstream.url("/ndjson"))
    arrived = upstream.resource.next_request()
    source.startService()
    request = await arrived
    gone = request.notifyFinish()
    await bounded(source.stopService())
    with pytest.raises(Exception):  # noqa: B017 - the client went away: finish fails
        await bounded(gone)


def test_sse_parser_is_independent_of_chunking() -> None:
    stream = (
        "\ufeffid: 7\r\nevent: e\r\ndata:x\r\n\r\n"
        ": c\rdata: 1\rdata:  2\r\rdata\n\nid: 8\n\nid: \0bad\ndata: z\n\nunfinished: 1\ndata: lost"
    ).encode()
    whole = SSEParser()
    expected = whole.feed(stream)
    assert expected == [("e", "x", "7"), ("message", "1\n 2", "7"), ("message", "", "7"),
                        ("message", "z", "8")]
    assert whole.last_event_id == "8"
    for size in (1, 2, 3, 5):
        parser = SSEParser()
        events = []
        for i in range(0, len(stream), size):
            events += parser.feed(stream[i:i + size])
        assert events == expected, size


def test_config_errors_name_the_key() -> None:
    broker = MemoryBroker(Clock())

    def build_http(**table: Any) -> Any:
        return build({"type": "http", **table}, broker, reactor)

    with pytest.raises(ConfigError, match="url is required"):
        build_http(channel="x")
    with pytest.raises(ConfigError, match="must be an http:// or https:// URL"):
        build_http(channel="x", url="ftp://example.com/")
    with pytest.raises(ConfigError, match="format must be one of ndjson, lines, sse"):
        build_http(channel="x", url="http://127.0.0.1/", format="xml")
    with pytest.raises(ConfigError, match="data = \"json\" applies to format = \"sse\" only"):
        build_http(channel="x", url="http://127.0.0.1/", data="json")
    with pytest.raises(ConfigError, match=r"headers\.X must be a string"):
        build_http(channel="x", url="http://127.0.0.1/", headers={"X": 1})
