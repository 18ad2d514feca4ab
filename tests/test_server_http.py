"""pushd.server over a real socket: malformed requests, pipelining, keep-alive,
100-continue, HEAD, HTTP/1.0 and Connection: close, each as bytes on the wire,
with a canary SSE subscriber that must lose nothing while attacks run."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import pytest_twisted

from tests.clients import RawHTTP, get_request, split_response, subscribed
from tests.test_ops_support import bounded

LONG_URL = "/channels/x/poll?" + "a" * 9000
BIG_HEADER = "X-Big: " + "b" * 17000
MANY_HEADERS = "\n".join(f"X-H{i}: v" for i in range(101))


def raw(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode() + body


# (name, request bytes, status, code)
MALFORMED = [
    ("bad request line", b"GET\r\n\r\n", 400, "bad_request"),
    ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "bad_request"),
    ("long URL", raw(f"GET {LONG_URL} HTTP/1.1\nHost: 127.0.0.1\n\n"), 414, "url_too_long"),
    ("header bytes", raw(f"GET / HTTP/1.1\nHost: 127.0.0.1\n{BIG_HEADER}\n\n"), 431, "headers_too_large"),
    ("header count", raw(f"GET / HTTP/1.1\n{MANY_HEADERS}\n\n"), 431, "too_many_headers"),
    ("body by Content-Length",
     raw("POST /channels/x HTTP/1.1\nHost: 127.0.0.1\nContent-Length: 65537\n\n"), 413, "too_large"),
    ("body by chunks",
     raw("POST /channels/x HTTP/1.1\nHost: 127.0.0.1\nTransfer-Encoding: chunked\n\n")
     + b"8000\r\n" + b"x" * 0x8000 + b"\r\n" + b"8000\r\n" + b"x" * 0x8000 + b"\r\n"
     + b"10\r\n" + b"x" * 16 + b"\r\n", 413, "too_large"),
    ("Content-Length and Transfer-Encoding",
     raw("POST /channels/x HTTP/1.1\nHost: 127.0.0.1\nContent-Length: 4\nTransfer-Encoding: chunked\n\n"
         "0\n\n"), 400, "bad_request"),
    ("duplicated Content-Length",
     raw("POST /channels/x HTTP/1.1\nHost: 127.0.0.1\nContent-Length: 1\nContent-Length: 1\n\nx"),
     400, "bad_request"),
    ("bad Content-Length",
     raw("POST /channels/x HTTP/1.1\nHost: 127.0.0.1\nContent-Length: +1\n\nx"), 400, "bad_request"),
    ("bad Transfer-Encoding",
     raw("POST /channels/x HTTP/1.1\nHost: 127.0.0.1\nTransfer-Encoding: gzip\n\nx"), 400, "bad_request"),
    ("bad chunk size",
     raw("POST /channels/x HTTP/1.1\nHost: 127.0.0.1\nTransfer-Encoding: chunked\n\nzz\n"),
     400, "bad_request"),
]


async def until_closed(client: RawHTTP) -> bytes:
    return await bounded(client.until(lambda _: client.ended))


@pytest_twisted.ensureDeferred
async def test_malformed_requests_get_a_json_error_and_a_close_and_the_canary_loses_nothing(
    running: Any,
) -> None:
    canary = await RawHTTP.open(running.port, get_request("/channels/canary/events"))
    await subscribed(running.broker, "canary")
    for i, (name, request, status, code) in enumerate(MALFORMED):
        await running.broker.publish("canary", f"m{i}")
        client = await RawHTTP.open(running.port, request)
        data = await until_closed(client)  # the connection's fate: closed
        line, headers, body = split_response(data)
        assert line.split()[1] == str(status).encode(), (name, data[:200])
        assert headers["content-type"] == "application/json", name
        assert headers["connection"] == "close", name
        assert json.loads(body[: int(headers["content-length"])])["error"] == code, name
    await running.broker.publish("canary", "last")
    text = (await bounded(canary.contains(b"data: last"))).decode()
    assert re.findall(r"data: (\S+)", text) == [f"m{i}" for i in range(len(MALFORMED))] + ["last"]
    assert running.broker.channel_count() == 1  # nothing was published by the attacks
    canary.close()


@pytest_twisted.ensureDeferred
async def test_a_route_error_keeps_the_connection(running: Any) -> None:
    """Only the server's own errors close: a route's 400 answers and reads on."""
    client = await RawHTTP.open(
        running.port, get_request("/channels/bad!name/poll") + get_request("/healthz")
    )
    data = await bounded(client.contains(b'"status":"ok"'))
    assert [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)] == [400, 200]
    assert not client.ended
    client.close()


def split_answers(data: bytes) -> list[tuple[int, bytes]]:
    """Each (status, body) of a run of answers, framed by length or chunks, in order."""
    answers = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        if not sep:
            break
        status = int(head.split(b" ")[1])
        match = re.search(rb"(?i)content-length: (\d+)", head)
        if match:
            length = int(match.group(1))
            body, data = data[:length], data[length:]
        else:  # chunked
            body = b""
            while True:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line, 16)
                body += data[:size]
                data = data[size + 2 :]
                if size == 0:
                    break
        answers.append((status, body))
    return answers


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_are_answered_in_order(running: Any) -> None:
    publish = b"POST /channels/p HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\nnew"
    poll = get_request("/channels/p/poll")
    requests = poll * 5 + publish + poll * 5 + get_request("/healthz")
    client = await RawHTTP.open(running.port, requests)
    await bounded(client.contains(b'"status":"ok"'))
    answers = split_answers(client.data)
    assert [status for status, _ in answers] == [200] * 5 + [201] + [200] * 5 + [200]
    polls = [json.loads(body)["messages"] for _, body in answers[:5] + answers[6:11]]
    assert polls[:5] == [[]] * 5  # before the publish
    assert all([m["data"] for m in messages] == ["new"] for messages in polls[5:])
    assert not client.ended  # and kept alive
    client.close()


@pytest_twisted.ensureDeferred
async def test_keep_alive_connection_is_reused(running: Any) -> None:
    client = await RawHTTP.open(running.port, get_request("/healthz"))
    await bounded(client.count(b'"status":"ok"', 1))
    client.protocol.transport.write(get_request("/readyz"))
    await bounded(client.contains(b'"status":"ready"'))
    assert len(running.daemon.site.connections.open) == 1
    client.close()


@pytest_twisted.ensureDeferred
async def test_expect_100_continue_then_201(running: Any) -> None:
    head = b"POST /channels/e HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    client = await RawHTTP.open(running.port, head)
    await bounded(client.contains(b"\r\n\r\n"))
    assert client.data == b"HTTP/1.1 100 Continue\r\n\r\n"
    client.protocol.transport.write(b"hi")
    data = await bounded(client.contains(b'"channel":"e"'))
    assert data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n")
    client.close()


@pytest_twisted.ensureDeferred
async def test_expect_100_continue_over_the_limit_gets_413_without_100(running: Any) -> None:
    client = await RawHTTP.open(
        running.port,
        b"POST /channels/e HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 70000\r\n"
        b"Expect: 100-continue\r\n\r\n",
    )
    data = await until_closed(client)
    assert data.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in data
    assert running.broker.channel_count() == 0


@pytest_twisted.ensureDeferred
async def test_head_has_headers_and_no_body(running: Any) -> None:
    request = b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + get_request("/readyz")
    client = await RawHTTP.open(running.port, request)
    data = await bounded(client.contains(b'"status":"ready"'))
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 OK") and b"Transfer-Encoding" not in first
    assert rest.startswith(b"HTTP/1.1 200 OK")  # no body in between
    client.close()


@pytest_twisted.ensureDeferred
async def test_http10_answer_then_close(running: Any) -> None:
    client = await RawHTTP.open(running.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    data = await until_closed(client)
    status, headers, body = split_response(data)
    assert status == b"HTTP/1.0 200 OK" and json.loads(body) == {"status": "ok"}
    # kept alive when asked and the answer has a length (a publish's has);
    # then the next request on the same connection
    request = b"POST /channels/k HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n1"
    client = await RawHTTP.open(running.port, request)
    await bounded(client.contains(b'"channel":"k"'))
    assert client.data.startswith(b"HTTP/1.0 201 Created")
    assert b"Connection: keep-alive" in client.data and not client.ended
    client.protocol.transport.write(b"GET /readyz HTTP/1.0\r\n\r\n")
    data = await until_closed(client)
    assert data.count(b"HTTP/1.0 200 OK") == 1 and data.endswith(b'{"status":"ready"}')


@pytest_twisted.ensureDeferred
async def test_http10_stream_is_never_chunked(running: Any) -> None:
    client = await RawHTTP.open(running.port, b"GET /channels/s/events HTTP/1.0\r\n\r\n")
    await subscribed(running.broker, "s")
    await running.broker.publish("s", "plain")
    data = await bounded(client.contains(b"data: plain\n\n"))
    status, headers, body = split_response(data)
    assert status == b"HTTP/1.0 200 OK" and "transfer-encoding" not in headers
    assert body.startswith(b"retry:")
    client.close()


@pytest_twisted.ensureDeferred
async def test_connection_close_is_honoured(running: Any) -> None:
    client = await RawHTTP.open(
        running.port, get_request("/healthz", "Connection: close") + get_request("/readyz")
    )
    data = await until_closed(client)
    status, headers, _ = split_response(data)
    assert status == b"HTTP/1.1 200 OK" and headers["connection"] == "close"
    assert b"ready" not in data


@pytest.mark.parametrize("path", ["/channels/lp/longpoll?timeout=30"])
@pytest_twisted.ensureDeferred
async def test_a_held_request_hears_its_client_leave(running: Any, path: str) -> None:
    client = await RawHTTP.open(running.port, get_request(path))
    await subscribed(running.broker, "lp")
    gone = running.daemon.site.connections.empty()
    client.close()
    await bounded(gone)
    assert running.broker.subscribers("lp") == 0  # Klein cancelled the handler


@pytest_twisted.ensureDeferred
async def test_slow_heads_and_bodies_are_cut_and_the_canary_loses_nothing(
    start_daemon: Any,
) -> None:
    def short(s: Any) -> None:
        s.http.header_timeout = 0.5
        s.http.body_timeout = 0.5

    running = start_daemon(short)
    canary = await RawHTTP.open(running.port, get_request("/channels/canary/events"))
    await subscribed(running.broker, "canary")
    slow_head = await RawHTTP.open(running.port, b"GET /channels/x/poll HTTP/1.1\r\nX-A: ")
    slow_body = await RawHTTP.open(
        running.port, b"POST /channels/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 60000\r\n\r\n"
        + b"x" * 50000,
    )
    silent = await RawHTTP.open(running.port, b"")
    for i in range(3):
        await running.broker.publish("canary", f"m{i}")
        # a byte now and then: the deadlines run on regardless
        slow_head.protocol.transport.write(b"a")
        slow_body.protocol.transport.write(b"x")
    for client in (slow_head, slow_body):
        data = await until_closed(client)
        assert data.startswith(b"HTTP/1.1 408 ") and b'"error":"timeout"' in data
    await until_closed(silent)
    await running.broker.publish("canary", "last")
    text = (await bounded(canary.contains(b"data: last"))).decode()
    assert re.findall(r"data: (\S+)", text) == ["m0", "m1", "m2", "last"]
    assert running.broker.channel_count() == 1  # the slow publish stored nothing
    canary.close()
