"""A token that expires under an open subscription (DESIGN "Who may publish
and read", Expiry): each transport says ``expired`` its own way, and the
client, back with a fresh token and its cursor, loses nothing.

Tokens here expire a second after they are made, with no leeway; the tests
wait for the daemon's notice on a Deferred (bounded), never sleep.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest_twisted
import treq
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

from pushd.config import AuthKey, Settings
from tests.clients import RawHTTP, get_request, subscribed
from tests.test_ws import Client, within

SECRET = "e" * 40
LIFE = 1.0  # seconds a short token lives


def keyed(s: Settings) -> None:
    s.auth.key = [AuthKey(alg="HS256", secret=SECRET)]
    s.auth.leeway = 0
    s.auth.grace = 0.5
    s.websocket.publish = True


def token(seconds: float = 600) -> str:
    claims = {"sub": "u", "exp": time.time() + seconds, "pushd": {"subscribe": ["exp.*"]}}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def publish(running: Any, channel: str, text: str) -> str:
    response = await treq.post(f"{running.url}/channels/{channel}", data=text.encode())
    assert response.code == 201, await response.text()
    return json.loads(await response.text())["id"]  # type: ignore[no-any-return]


def ids(data: bytes) -> list[str]:
    return [line[4:] for line in data.decode().split("\n") if line.startswith("id: ")]


@pytest_twisted.ensureDeferred
async def test_sse_says_expired_ends_and_resumes_with_a_fresh_token(start_daemon: Any) -> None:
    running = start_daemon(keyed)
    stream = await RawHTTP.open(
        running.port, get_request(f"/channels/exp.sse/events?token={token(LIFE)}")
    )
    await within(subscribed(running.broker, "exp.sse"))
    first = await publish(running, "exp.sse", "one")
    await within(stream.contains(first.encode()))
    data = await within(stream.contains(b"event: expired\n"))
    assert b'data: {"channel":"exp.sse"}' in data
    await within(stream.until(lambda d: d.endswith(b"0\r\n\r\n") or stream.ended))
    missed = [await publish(running, "exp.sse", "two"), await publish(running, "exp.sse", "3")]
    again = await RawHTTP.open(
        running.port,
        get_request(f"/channels/exp.sse/events?token={token()}", f"Last-Event-ID: {first}"),
    )
    data = await within(again.count(b"id: ", 2))
    assert ids(data) == missed
    again.close()


@pytest_twisted.ensureDeferred
async def test_a_stream_says_expired_and_ends(start_daemon: Any) -> None:
    running = start_daemon(keyed)
    stream = await RawHTTP.open(
        running.port,
        get_request("/channels/exp.nd/stream", f"Authorization: Bearer {token(LIFE)}"),
    )
    await within(subscribed(running.broker, "exp.nd"))
    data = await within(stream.contains(b'"type":"expired"'))
    assert b'{"type":"expired","channel":"exp.nd"}\n' in data
    await within(stream.until(lambda d: d.endswith(b"0\r\n\r\n") or stream.ended))
    stream.close()


@pytest_twisted.ensureDeferred
async def test_a_held_long_poll_answers_expired_with_its_cursor(start_daemon: Any) -> None:
    running = start_daemon(keyed)
    mid = await publish(running, "exp.lp", "seed")
    started = time.monotonic()
    response = await within(
        treq.get(
            f"{running.url}/channels/exp.lp/longpoll?since={mid}&timeout=30",
            headers={"Authorization": f"Bearer {token(LIFE)}"},
        )
    )
    body = json.loads(await response.text())
    assert response.code == 200
    assert body == {"messages": [], "cursor": mid, "expired": True}
    assert time.monotonic() - started < 10  # the token's end, not the 30 s timeout


async def open_ws(running: Any, tok: str) -> Client:
    factory = WebSocketClientFactory(
        f"ws://127.0.0.1:{running.port}/ws?token={tok}", reactor=reactor
    )
    factory.protocol = Client
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", running.port)
    proto: Client = await within(endpoint.connect(factory))
    await within(proto.is_open)
    return proto


@pytest_twisted.ensureDeferred
async def test_a_websocket_renews_within_the_grace_and_loses_nothing(start_daemon: Any) -> None:
    running = start_daemon(keyed)
    ws = await open_ws(running, token(LIFE))
    try:
        ws.send({"type": "subscribe", "channel": "exp.ws"})
        await ws.barrier()
        assert (await ws.next())["type"] == "expired"
        sent = await publish(running, "exp.ws", "in the grace")
        ws.send({"type": "auth", "token": token()})
        frames = [await ws.next(), await ws.next()]
        assert {f["type"] for f in frames} == {"message", "auth"}
        assert [f["id"] for f in frames if f["type"] == "message"] == [sent]
        later = await publish(running, "exp.ws", "after")
        assert (await ws.next())["id"] == later  # still open, past the grace
    finally:
        ws.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_a_websocket_without_a_new_token_is_closed_4001(start_daemon: Any) -> None:
    running = start_daemon(keyed)
    ws = await open_ws(running, token(LIFE))
    ws.send({"type": "subscribe", "channel": "exp.ws2"})
    await ws.barrier()
    assert (await ws.next())["type"] == "expired"
    assert await within(ws.close_code) == 4001
