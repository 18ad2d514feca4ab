"""The one route table (pushd.web.routes): hot routes dispatched straight
from it answer exactly as through Klein's router, over a real port.

A percent-escape in the path sends the same request through Klein, so each
request is made both ways and the answers compared; a counter on the Klein
resource shows which way a request went.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from pushd.errors import LimitError
from pushd.model import Message
from pushd.web.routes import ROUTES, Router
from tests.clients import RawHTTP, dechunk, split_response

pytestmark = pytest.mark.both_brokers


def request(method: str, path: str, body: bytes = b"", *headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    if method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join([*lines, "", ""])).encode() + body


async def answer(port: int, raw: bytes) -> tuple[bytes, dict[str, str], Any]:
    """Status line, headers and the JSON body of one request's answer."""
    conn = await RawHTTP.open(port, raw)

    def complete(data: bytes) -> bool:
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            return False
        _, headers, _ = split_response(data)
        if "content-length" in headers:
            return len(body) >= int(headers["content-length"])
        return dechunk(body)[1]

    data = await conn.until(complete)
    conn.close()
    status, headers, body = split_response(data)
    if "content-length" not in headers:
        body = b"".join(dechunk(body)[0])
    return status, headers, json.loads(body) if body else None


def through_klein(running: Any) -> list[bytes]:
    """The paths that reach Klein's router from now on."""
    dispatch = running.daemon.site.handle.resource.inner
    seen: list[bytes] = []
    klein_render = dispatch.inner.render

    def render(request: Any) -> Any:
        seen.append(request.path)
        return klein_render(request)

    dispatch.inner.render = render
    return seen


@pytest_twisted.ensureDeferred
async def test_a_publish_takes_the_table_and_answers_as_klein_does(running: Any) -> None:
    klein_saw = through_klein(running)
    lane = await answer(running.port, request("POST", "/channels/news", b"hi"))
    klein = await answer(running.port, request("POST", "/channels/%6Eews", b"hi"))
    assert klein_saw == [b"/channels/%6Eews"]  # the other way, really
    assert lane[0] == klein[0] == b"HTTP/1.1 201 Created"
    for _, headers, body in (lane, klein):
        assert headers["content-type"] == "application/json"
        assert headers["content-length"] == str(len(json.dumps(body, separators=(",", ":"))))
    assert {k: v for k, v in lane[1].items() if k != "date"} == {
        k: v for k, v in klein[1].items() if k != "date"
    }
    assert lane[2]["channel"] == klein[2]["channel"] == "news"
    assert lane[2]["id"] < klein[2]["id"]
    page = await running.broker.read("news", None, 10)
    assert [m.data for m in page.messages] == ["hi", "hi"]


BAD = [
    ("POST", "/channels/bad!name", "/channels/bad%21name", b"x", ()),
    ("POST", "/channels/news?event=no%20spaces", "/channels/%6Eews?event=no%20spaces", b"x", ()),
    ("POST", "/channels/news", "/channels/%6Eews", b"\xff\xfe", ("Content-Type: text/plain",)),
    ("POST", "/channels/news", "/channels/%6Eews", b"{", ("Content-Type: application/json",)),
    ("POST", "/channels/news", "/channels/%6Eews", b"x" * 70000, ()),
    ("GET", "/channels/bad!name/events", "/channels/bad%21name/events", b"", ()),
    ("GET", "/channels/bad!name/stream", "/channels/bad%21name/stream", b"", ()),
]


@pytest.mark.parametrize(("method", "lane_path", "klein_path", "body", "headers"), BAD)
@pytest_twisted.ensureDeferred
async def test_bad_input_gets_the_same_json_error_both_ways(
    start_daemon: Any, method: str, lane_path: str, klein_path: str, body: bytes,
    headers: tuple[str, ...],
) -> None:
    running = start_daemon()
    lane = await answer(running.port, request(method, lane_path, body, *headers))
    klein = await answer(running.port, request(method, klein_path, body, *headers))
    assert lane[0] == klein[0]
    assert lane[0].split()[1] in (b"400", b"413")
    assert lane[1]["content-length"] == klein[1]["content-length"]
    if lane[0].split()[1] == b"413":
        # Too large: the HTTP server answers before reading the body, either way
        # (DESIGN "Every byte bounded"), and closes the connection.
        assert lane[1]["connection"] == klein[1]["connection"] == "close"
    assert lane[2] == klein[2] and {"error", "message"} <= set(lane[2])
    assert running.broker.channel_count() == 0  # nothing was published


@pytest_twisted.ensureDeferred
async def test_a_broker_that_answers_later_gets_its_answer_written_then(running: Any) -> None:
    """A broker may answer a publish later (over the network): the answer waits."""
    pending: list[Deferred[Message]] = []

    def publish(items: Any) -> Deferred[list[Message]]:
        pending.append(Deferred())
        asked.callback(None)
        return pending[-1]

    running.broker.publish_many = publish  # every client publish's one path
    asked: Deferred[None] = Deferred()
    conn = await RawHTTP.open(running.port, request("POST", "/channels/later", b"x"))
    await asked
    assert conn.data == b""  # no answer before the broker's
    pending[0].callback([Message("e-7", 7, "later", "message", "x", 0)])
    data = await conn.contains(b'"id":"e-7"')
    status, headers, body = split_response(data)
    assert status == b"HTTP/1.1 201 Created"
    assert int(headers["content-length"]) == len(body)

    # a limit the broker hits later is the same JSON 503 with Retry-After
    asked = Deferred()
    conn2 = await RawHTTP.open(running.port, request("POST", "/channels/later", b"x"))
    await asked
    pending[1].errback(LimitError("too_many_channels", "full", 7))
    data = await conn2.contains(b"too_many_channels")
    status, headers, _ = split_response(data)
    assert status.startswith(b"HTTP/1.1 503") and headers["retry-after"] == "7"

    # a client that left before the answer: nothing is written, nothing breaks
    asked = Deferred()
    conn3 = await RawHTTP.open(running.port, request("POST", "/channels/later", b"x"))
    await asked
    conn3.abort()
    await conn3.until(lambda _: conn3.ended)
    pending[2].callback([Message("e-9", 9, "later", "message", "x", 0)])
    del running.broker.publish_many
    ok = await answer(running.port, request("POST", "/channels/later", b"y"))
    assert ok[0] == b"HTTP/1.1 201 Created"
    conn.close()
    conn2.close()


def test_the_router_matches_hot_routes_only_and_only_plain_paths() -> None:
    router = Router(ROUTES)
    found = router.match(b"POST", b"/channels/news")
    assert found is not None and found[0].handler == "publish_one" and found[1] == {
        "channel": "news"
    }
    assert router.match(b"GET", b"/channels/a.b/events")[1] == {"channel": "a.b"}  # type: ignore[index]
    assert router.match(b"GET", b"/channels/c/stream")[0].handler == "stream"  # type: ignore[index]
    assert router.match(b"POST", b"/channels/c/stream")[0].handler == "stream"  # type: ignore[index]
    for method, path in [
        (b"GET", b"/channels/news"),  # info: not hot
        (b"DELETE", b"/channels/news"),
        (b"GET", b"/channels/%6Eews/events"),  # Klein decodes escapes
        (b"GET", b"/channels/news/events/"),  # trailing slash
        (b"GET", b"/channels//events"),
        (b"GET", b"/channels/n\xc3\xa9/events"),
        (b"PUT", b"/channels/news"),
        (b"GET", b"/healthz"),
    ]:
        assert router.match(method, path) is None, (method, path)


def test_klein_serves_every_route_of_the_table() -> None:
    """The Klein app is built from the table: the same URLs, nothing else."""
    from twisted.internet.task import Clock

    from pushd.broker.memory import MemoryBroker
    from pushd.config import Settings
    from pushd.registry import Registry
    from pushd.web.app import PushdApp
    from pushd.web.context import Context

    clock = Clock()
    app = PushdApp(Context(MemoryBroker(clock), Settings(), clock, Registry()))
    rules = {(rule.rule, frozenset(rule.methods or ()) - {"HEAD", "OPTIONS"})
             for rule in app.app.url_map.iter_rules()}
    assert rules == {(route.path, frozenset(route.methods)) for route in ROUTES}


def test_query_arguments_read_as_twisted_reads_them() -> None:
    from urllib.parse import parse_qs

    from pushd.server.exchange import _query

    for query in [b"since=ep-1&timeout=5", b"a=1&a=2&b=", b"x", b"a=%20b&c=d+e", b"&&a=1&",
                  b"since=ab-12;x=1", b"a%3D=%26"]:
        assert _query(query) == parse_qs(query, keep_blank_values=True), query
    # parse_qs of bytes fails on escaped UTF-8; a channel's event name may not
    # hold it, but the answer must be a 400 naming it, not a crash
    assert _query(b"event=caf%C3%A9") == {b"event": ["café".encode()]}


@pytest_twisted.ensureDeferred
async def test_an_escaped_utf8_query_is_a_json_400_on_a_hot_route(running: Any) -> None:
    status, headers, body = await answer(
        running.port, request("POST", "/channels/news?event=caf%C3%A9", b"x")
    )
    assert status == b"HTTP/1.1 400 Bad Request"
    assert body["error"] == "bad_event"
    assert running.broker.channel_count() == 0
