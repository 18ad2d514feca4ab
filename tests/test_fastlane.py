"""The fast lane (pushd.web.fastlane) answers as Klein would, over a real port.

A percent-escape in the path sends the same request through Klein, so each
request is made both ways and the answers compared. The publish answer's
framing shows which way a request went: ``Content-Length`` from the lane,
chunked from Klein.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from pushd.errors import LimitError
from pushd.model import Message
from tests.clients import RawHTTP, dechunk, split_response


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


@pytest_twisted.ensureDeferred
async def test_a_publish_takes_the_lane_and_answers_as_klein_does(running: Any) -> None:
    lane = await answer(running.port, request("POST", "/channels/news", b"hi"))
    klein = await answer(running.port, request("POST", "/channels/%6Eews", b"hi"))
    assert lane[0] == klein[0] == b"HTTP/1.1 201 Created"
    assert lane[1]["content-length"] == str(len(json.dumps(lane[2], separators=(",", ":"))))
    assert klein[1]["transfer-encoding"] == "chunked"  # the other way, really
    for _, headers, _ in (lane, klein):
        assert headers["content-type"] == "application/json"
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
    if lane[0].split()[1] == b"413":
        # Too large: the HTTP server answers before reading the body, either way
        # (DESIGN "Every byte bounded"), and closes the connection.
        assert lane[1]["connection"] == klein[1]["connection"] == "close"
        assert "content-length" in lane[1] and "content-length" in klein[1]
    else:
        assert "content-length" in lane[1] and klein[1]["transfer-encoding"] == "chunked"
    assert lane[2] == klein[2] and {"error", "message"} <= set(lane[2])
    assert running.broker.channel_count() == 0  # nothing was published


@pytest_twisted.ensureDeferred
async def test_a_broker_that_answers_later_gets_its_answer_written_then(running: Any) -> None:
    """A broker may answer a publish later (over the network): the lane waits."""
    pending: list[Deferred[Message]] = []

    def publish(channel: str, data: Any, event: str = "message") -> Deferred[Message]:
        pending.append(Deferred())
        asked.callback(None)
        return pending[-1]

    running.broker.publish = publish
    asked: Deferred[None] = Deferred()
    conn = await RawHTTP.open(running.port, request("POST", "/channels/later", b"x"))
    await asked
    assert conn.data == b""  # no answer before the broker's
    pending[0].callback(Message("e-7", 7, "later", "message", "x", 0))
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
    pending[2].callback(Message("e-9", 9, "later", "message", "x", 0))
    del running.broker.publish
    ok = await answer(running.port, request("POST", "/channels/later", b"y"))
    assert ok[0] == b"HTTP/1.1 201 Created"
    conn.close()
    conn2.close()
