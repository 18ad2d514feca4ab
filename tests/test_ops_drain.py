"""SIGTERM drains a real ``twistd -n pushd``: every client sees its polite end,
the process exits 0 within the drain time, and a second SIGTERM ends the wait.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.testing import StringTransport

from tests.clients import RawHTTP, dechunk, get_request, split_response
from tests.helpers import parse_sse
from tests.test_ops_support import (
    bounded,
    get,
    post,
    spawn_pushd,
    started_port,
    stop,
    ws_client_frame,
    ws_close_code,
    ws_open,
)

DRAIN = 8.0


pytestmark = pytest.mark.both_brokers


async def subscribers(url: str, channel: str, n: int) -> None:
    """Ask the daemon until ``channel`` has ``n`` subscribers (each ask is a round trip)."""
    for _ in range(500):
        code, _, body = await get(f"{url}/channels/{channel}")
        if code == 200 and json.loads(body)["subscribers"] >= n:
            return
    raise AssertionError(f"{channel} never had {n} subscribers")


@pytest_twisted.ensureDeferred
async def test_sigterm_ends_every_transport_politely_and_exits_0(tmp_path: Path) -> None:
    config = f"source = []\n[drain]\ntimeout = {DRAIN}\n[sse]\nretry = 2000\n"
    child, process = spawn_pushd(tmp_path, "--listen", "tcp:0:interface=127.0.0.1",
                                 config=config)
    try:
        port = await started_port(child)
        url = f"http://127.0.0.1:{port}"
        code, body = await post(f"{url}/channels/d", b'"first"')
        assert code == 201
        cursor = json.loads(body)["id"]
        longpoll = await RawHTTP.open(
            port, get_request(f"/channels/d/longpoll?since={cursor}&timeout=100")
        )
        sse = await RawHTTP.open(port, get_request("/channels/d/events"))
        stream = await RawHTTP.open(port, get_request("/channels/d/stream"))
        ws = await ws_open(port, "/channels/d/ws")
        await sse.contains(b"retry: 2000")
        await stream.until(lambda d: b"\r\n\r\n" in d)
        await subscribers(url, "d", 4)

        sent = reactor.seconds()
        process.signalProcess("TERM")

        # WebSocket: close 1001; the client answers like a browser would.
        await bounded(ws.until(lambda d: ws_close_code(d) is not None))
        assert ws_close_code(ws.data) == 1001
        ws.protocol.transport.write(ws_client_frame(0x8, struct.pack("!H", 1001)))

        # Long-poll: 200 with the cursor it had, nothing new.
        await bounded(longpoll.until(lambda _: longpoll.ended))  # answered, then closed
        status, headers, body = split_response(longpoll.data)
        assert status == b"HTTP/1.1 200 OK", longpoll.data
        payload = body if "content-length" in headers else b"".join(dechunk(body)[0])
        assert json.loads(payload) == {"messages": [], "cursor": cursor}

        # SSE: a second, jittered retry: (at most the configured 2000 ms), then the end.
        await bounded(sse.until(lambda _: sse.ended))
        status, _, body = split_response(sse.data)
        chunks, final = dechunk(body)
        assert final, sse.data
        retries = [int(e["retry"]) for e in parse_sse(b"".join(chunks).decode()) if "retry" in e]
        assert retries[0] == 2000 and len(retries) == 2 and 100 <= retries[1] <= 2000, retries

        # Stream: the final chunk, a clean end.
        await bounded(stream.until(lambda _: stream.ended))
        assert dechunk(split_response(stream.data)[2])[1], stream.data

        assert await bounded(child.exited, DRAIN + 10) == (0, None), child.log()
        assert child.exit_time is not None and child.exit_time - sent < DRAIN
        log = child.log()
        assert "draining: 4 subscriptions" in log, log
        assert "drain: every client has gone" in log, log
        assert "Traceback" not in log, log
    finally:
        stop(child, process)


@pytest_twisted.ensureDeferred
async def test_a_second_sigterm_stops_waiting_for_clients(tmp_path: Path) -> None:
    child, process = spawn_pushd(tmp_path, "--listen", "tcp:0:interface=127.0.0.1",
                                 config="source = []\n[drain]\ntimeout = 60\n")
    try:
        port = await started_port(child)
        # A WebSocket client that never answers the close frame holds the drain.
        ws = await ws_open(port, "/ws")
        ws.protocol.transport.write(ws_client_frame(0x1, b'{"type":"ping"}'))
        await bounded(ws.contains(b"pong"))
        process.signalProcess("TERM")
        await bounded(ws.until(lambda d: ws_close_code(d) == 1001))
        await child.wait_for(rb"draining: 1 subscriptions")
        sent = reactor.seconds()
        process.signalProcess("TERM")
        assert await bounded(child.exited, 30) == (0, None), child.log()
        assert child.exit_time is not None and child.exit_time - sent < 10
        assert "second SIGTERM" in child.log()
    finally:
        stop(child, process)


@pytest_twisted.ensureDeferred
async def test_new_requests_on_an_open_connection_get_503_while_draining(
    start_daemon: Any,
) -> None:
    running = start_daemon()
    running.daemon.web.ws_factory.setProtocolOptions(closeHandshakeTimeout=60)
    holder = await ws_open(running.port, "/ws")  # keeps the drain waiting
    stopping = running.daemon.stopService()
    await bounded(holder.until(lambda d: ws_close_code(d) == 1001))
    # Straight into the site: a request on a connection accepted before the drain.
    proto = running.daemon.site.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(get_request("/channels/z/events"))
    status, headers, body = split_response(transport.value())
    assert status == b"HTTP/1.1 503 Service Unavailable", transport.value()
    assert headers["retry-after"] == "5" and headers["connection"] == "close"
    assert json.loads(body)["error"] == "draining"
    running.daemon.cut_short()
    await bounded(stopping)
