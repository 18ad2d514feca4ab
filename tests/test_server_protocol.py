"""pushd.server's HTTP/1.1 protocol on a fake clock and an in-memory transport.

The handler here answers ``200 <method> <path> <body>`` at once, or holds a
request until the test answers it, so ordering, bounds and deadlines are
seen as bytes on the wire without sockets or sleeps.
"""

from __future__ import annotations

import json
import re
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from pushd.config import Http
from pushd.server import HttpConnection, HttpRequest, HttpServer


class Handler:
    def __init__(self) -> None:
        self.hold: set[bytes] = set()
        self.held: list[tuple[HttpConnection, HttpRequest]] = []
        self.seen: list[HttpRequest] = []

    def __call__(self, conn: HttpConnection, request: HttpRequest) -> Any:
        self.seen.append(request)
        if request.path in self.hold:
            self.held.append((conn, request))
            return None
        answer(conn, request)
        return None


def answer(conn: HttpConnection, request: HttpRequest) -> None:
    body = b"%s %s %s" % (request.method, request.path, request.body)
    keep = conn.start_response(200, True, False, request.version)
    head = b"%s 200 OK\r\nContent-Length: %d\r\n" % (request.version, len(body))
    if not keep:
        head += b"Connection: close\r\n"
    conn.transport.write(head + b"\r\n" + body)
    conn.finish_response()


def connect(**settings: Any) -> tuple[HttpConnection, StringTransport, MemoryReactorClock, Handler]:
    clock = MemoryReactorClock()
    handler = Handler()
    over = settings.pop("over_limit", False)
    limit = settings.pop("body_limit", 100)
    server = HttpServer(handler, clock, Http(**settings), body_limit=lambda m, p: limit)
    if over:
        server.connections.max_total = 1
        server.connections.open.add(object())  # type: ignore[arg-type]
    conn = server.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
    transport = StringTransport()
    conn.makeConnection(transport)
    return conn, transport, clock, handler


def statuses(data: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)]


def error_of(data: bytes) -> dict[str, Any]:
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head
    return json.loads(body)  # type: ignore[no-any-return]


GET = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n"


def test_pipelined_requests_are_answered_in_order_and_kept_alive() -> None:
    conn, transport, clock, handler = connect()
    handler.hold.add(b"/slow")
    conn.dataReceived(GET % b"/slow" + GET % b"/a" + b"POST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
    assert transport.value() == b""  # /a and /b wait behind /slow
    held_conn, held = handler.held.pop()
    answer(held_conn, held)
    out = transport.value()
    assert out.index(b"GET /slow") < out.index(b"GET /a") < out.index(b"POST /b hi")
    assert not transport.disconnecting
    transport.clear()
    conn.dataReceived(GET % b"/again")  # the same connection, reused
    assert transport.value().endswith(b"GET /again ")


def test_parsed_requests_waiting_are_bounded_and_reading_pauses() -> None:
    conn, transport, clock, handler = connect(max_pipelined=4)
    handler.hold.add(b"/slow")
    conn.dataReceived(GET % b"/slow" + (GET % b"/x") * 400)
    assert len(conn.queue) <= 4 + 4096 // len(GET % b"/x")
    assert transport.producerState == "paused"
    while handler.held or len(handler.seen) < 401:
        held_conn, held = handler.held.pop()
        answer(held_conn, held)
    assert transport.value().count(b"GET /x") == 400
    assert transport.producerState == "producing"


def test_slowloris_header_trickle_does_not_reset_the_deadline() -> None:
    conn, transport, clock, handler = connect(header_timeout=10)
    head = b"GET /trickle HTTP/1.1\r\nX-Slow: "
    for i in range(9):
        conn.dataReceived(head[i : i + 1])
        clock.advance(1)
    assert not transport.disconnecting
    conn.dataReceived(b"a")
    clock.advance(1.5)  # 10.5 s after the first byte, bytes having come all along
    assert statuses(transport.value()) == [408]
    assert error_of(transport.value())["error"] == "timeout"
    assert transport.disconnecting
    assert handler.seen == []


def test_header_deadline_runs_from_accept() -> None:
    conn, transport, clock, handler = connect(header_timeout=10)
    clock.advance(10)
    assert transport.disconnecting


def test_slow_body_is_cut_at_the_body_deadline() -> None:
    conn, transport, clock, handler = connect(body_timeout=30, body_limit=100_000)
    conn.dataReceived(b"POST /p HTTP/1.1\r\nContent-Length: 99999\r\n\r\n" + b"x" * 90_000)
    for _ in range(29):
        conn.dataReceived(b"x")  # one byte a second: never done in time
        clock.advance(1)
    assert not transport.disconnecting
    clock.advance(1)
    assert statuses(transport.value()) == [408] and transport.disconnecting
    assert handler.seen == []


def test_idle_keep_alive_connection_is_closed() -> None:
    conn, transport, clock, handler = connect(idle_timeout=75)
    conn.dataReceived(GET % b"/one")
    clock.advance(74)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting and statuses(transport.value()) == [200]


def test_over_limit_trickle_is_closed_on_the_clock() -> None:
    conn, transport, clock, handler = connect(over_limit=True, header_timeout=10)
    for i in range(9):
        conn.dataReceived(b"GET /channels/x/poll"[i : i + 1])  # a byte now and then
        clock.advance(1)
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.disconnecting


def test_over_limit_request_gets_503_then_the_connection_closes() -> None:
    conn, transport, clock, handler = connect(over_limit=True)
    conn.dataReceived(GET % b"/channels/a/poll" + GET % b"/channels/b/poll")
    assert statuses(transport.value()) == [503]
    assert b"Retry-After: 5" in transport.value()
    assert error_of(transport.value())["error"] == "too_many_connections"
    assert transport.disconnecting
    conn.dataReceived(GET % b"/more")  # whatever it keeps sending
    assert statuses(transport.value()) == [503] and handler.seen == []


def test_over_limit_healthz_is_served_once_then_closed() -> None:
    conn, transport, clock, handler = connect(over_limit=True)
    conn.dataReceived(GET % b"/healthz" + GET % b"/healthz")
    assert statuses(transport.value()) == [200]
    assert b"Connection: close" in transport.value() and transport.disconnecting


def test_expect_100_continue_then_the_answer() -> None:
    conn, transport, clock, handler = connect()
    conn.dataReceived(b"POST /p HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.dataReceived(b"hello")
    assert statuses(transport.value()) == [100, 200]


def test_expect_100_continue_over_the_limit_gets_413_without_100() -> None:
    conn, transport, clock, handler = connect(body_limit=10)
    conn.dataReceived(b"POST /p HTTP/1.1\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n")
    assert statuses(transport.value()) == [413] and transport.disconnecting


def test_chunked_body_413_as_soon_as_it_passes_the_limit() -> None:
    conn, transport, clock, handler = connect(body_limit=10)
    conn.dataReceived(b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n")
    assert transport.value() == b""
    conn.dataReceived(b"8\r\n12345678\r\n")  # 16 > 10: answered before the body ends
    assert statuses(transport.value()) == [413] and transport.disconnecting
    assert handler.seen == []


def test_chunked_body_within_the_limit_is_read() -> None:
    conn, transport, clock, handler = connect(body_limit=10)
    conn.dataReceived(b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert transport.value().endswith(b"POST /p abcde")


def test_http10_closes_unless_keep_alive_is_asked() -> None:
    conn, transport, clock, handler = connect()
    conn.dataReceived(b"GET /a HTTP/1.0\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.0 200") and transport.disconnecting
    conn, transport, clock, handler = connect()
    conn.dataReceived(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\n")
    assert statuses(transport.value()) == [200, 200] and transport.disconnecting


def test_connection_close_closes_after_the_answer() -> None:
    conn, transport, clock, handler = connect()
    conn.dataReceived(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n" + GET % b"/b")
    assert statuses(transport.value()) == [200] and transport.disconnecting
    assert b"Connection: close" in transport.value()


def test_an_error_after_pipelined_requests_comes_after_their_answers() -> None:
    conn, transport, clock, handler = connect()
    handler.hold.add(b"/slow")
    conn.dataReceived(GET % b"/slow" + b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n")
    assert transport.value() == b""
    held_conn, held = handler.held.pop()
    answer(held_conn, held)
    assert statuses(transport.value()) == [200, 400] and transport.disconnecting


def test_a_hook_answers_first_and_the_handler_is_not_asked() -> None:
    conn, transport, clock, handler = connect()

    def hook(conn: HttpConnection, request: HttpRequest) -> bool:
        if request.path != b"/hot":
            return False
        conn.respond(200, b"OK", [(b"Content-Type", b"text/plain")], b"direct")
        return True

    conn.server.hook = hook
    conn.dataReceived(GET % b"/hot" + GET % b"/cold" + b"HEAD /hot HTTP/1.1\r\n\r\n")
    out = transport.value()
    assert statuses(out) == [200, 200, 200]
    assert out.count(b"direct") == 1 and out.index(b"direct") < out.index(b"GET /cold")
    assert out.endswith(b"Content-Length: 6\r\n\r\n")  # HEAD: no body
    assert [r.path for r in handler.seen] == [b"/cold"]
