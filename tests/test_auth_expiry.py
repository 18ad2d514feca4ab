"""A token that expires under an open subscription (DESIGN "Who may publish
and read", Expiry): each transport says ``expired`` its own way, and the
client, back with a fresh token and its cursor, loses nothing.

The daemon judges tokens, and arms their expiry (and a WebSocket's grace),
on its tokens' clock: the reactor in production, here a ``task.Clock`` set
to now, so a token expires when the test advances that clock. Sockets,
heartbeats and long-poll timeouts stay on the real reactor: an answer that
comes at the advance is the token's doing, nothing else's.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
import pytest_twisted
import treq
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import Clock

from pushd.config import AuthKey, Settings
from tests.clients import RawHTTP, get_request
from tests.test_ws import Client, within

SECRET = "e" * 40
LIFE = 60.0  # seconds a short token lives, on the tokens' clock
GRACE = 30.0  # [auth] grace


def keyed(s: Settings) -> None:
    s.auth.key = [AuthKey(alg="HS256", secret=SECRET)]
    s.auth.leeway = 0
    s.auth.grace = GRACE
    s.websocket.publish = True


class AuthClock(Clock):
    """The tokens' clock, started at now; ``armed()`` fires at the next timer
    armed on it (a subscription's expiry), so a test advances only once the
    daemon is watching the token."""

    def __init__(self) -> None:
        super().__init__()
        self.advance(time.time())
        self._armed: list[Deferred[None]] = []

    def callLater(self, delay: float, f: Any, *args: Any, **kw: Any) -> Any:
        call = super().callLater(delay, f, *args, **kw)
        waiting, self._armed = self._armed, []
        for d in waiting:
            d.callback(None)
        return call

    def armed(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._armed.append(d)
        return within(d)


@pytest.fixture
def keyed_daemon(start_daemon: Any) -> tuple[Any, AuthClock]:
    running = start_daemon(keyed)
    clock = AuthClock()
    running.daemon.context.tokens.clock = clock
    return running, clock


def token(clock: Clock, seconds: float = 3600) -> str:
    claims = {"sub": "u", "exp": clock.seconds() + seconds, "pushd": {"subscribe": ["exp.*"]}}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def publish(running: Any, channel: str, text: str) -> str:
    response = await treq.post(f"{running.url}/channels/{channel}", data=text.encode())
    assert response.code == 201, await response.text()
    return json.loads(await response.text())["id"]  # type: ignore[no-any-return]


def ids(data: bytes) -> list[str]:
    return [line[4:] for line in data.decode().split("\n") if line.startswith("id: ")]


def ended(client: RawHTTP) -> Deferred[bytes]:
    """The response is over: the last chunk came, or the connection closed."""
    return within(client.until(lambda d: d.endswith(b"0\r\n\r\n") or client.ended))


@pytest_twisted.ensureDeferred
async def test_sse_says_expired_ends_and_resumes_with_a_fresh_token(keyed_daemon: Any) -> None:
    running, clock = keyed_daemon
    armed = clock.armed()
    stream = await RawHTTP.open(
        running.port, get_request(f"/channels/exp.sse/events?token={token(clock, LIFE)}")
    )
    await armed
    first = await publish(running, "exp.sse", "one")
    await within(stream.contains(first.encode()))
    clock.advance(LIFE - 1)
    assert b"expired" not in stream.data  # not before its time
    clock.advance(1.001)
    data = await within(stream.contains(b"event: expired\n"))
    assert b'data: {"channel":"exp.sse"}' in data
    await ended(stream)
    missed = [await publish(running, "exp.sse", "two"), await publish(running, "exp.sse", "3")]
    again = await RawHTTP.open(
        running.port,
        get_request(f"/channels/exp.sse/events?token={token(clock)}", f"Last-Event-ID: {first}"),
    )
    data = await within(again.count(b"id: ", 2))
    assert ids(data) == missed
    again.close()


@pytest_twisted.ensureDeferred
async def test_a_stream_says_expired_ends_and_resumes_with_a_fresh_token(
    keyed_daemon: Any,
) -> None:
    running, clock = keyed_daemon
    armed = clock.armed()
    stream = await RawHTTP.open(
        running.port,
        get_request("/channels/exp.nd/stream", f"Authorization: Bearer {token(clock, LIFE)}"),
    )
    await armed
    first = await publish(running, "exp.nd", "one")
    await within(stream.contains(first.encode()))
    clock.advance(LIFE + 0.001)
    data = await within(stream.contains(b'"type":"expired"'))
    assert b'{"type":"expired","channel":"exp.nd"}\n' in data
    await ended(stream)
    missed = [await publish(running, "exp.nd", "two"), await publish(running, "exp.nd", "3")]
    again = await RawHTTP.open(
        running.port,
        get_request(
            f"/channels/exp.nd/stream?since={first}", f"Authorization: Bearer {token(clock)}"
        ),
    )
    await within(again.contains(missed[-1].encode()))
    got = [json.loads(line)["id"] for line in again.data.split(b"\n") if b'"id"' in line]
    assert got == missed
    again.close()


@pytest_twisted.ensureDeferred
async def test_a_held_long_poll_answers_expired_with_its_cursor(keyed_daemon: Any) -> None:
    running, clock = keyed_daemon
    mid = await publish(running, "exp.lp", "seed")
    armed = clock.armed()
    answer = treq.get(
        f"{running.url}/channels/exp.lp/longpoll?since={mid}&timeout=30",
        headers={"Authorization": f"Bearer {token(clock, LIFE)}"},
    )
    came: list[object] = []
    answer.addCallback(lambda r: came.append(r) or r)
    await armed
    assert not came  # held
    clock.advance(LIFE + 0.001)
    response = await within(answer)
    body = json.loads(await response.text())
    assert response.code == 200
    assert body == {"messages": [], "cursor": mid, "expired": True}
    missed = await publish(running, "exp.lp", "meanwhile")
    response = await within(
        treq.get(
            f"{running.url}/channels/exp.lp/longpoll?since={mid}",
            headers={"Authorization": f"Bearer {token(clock)}"},
        )
    )
    body = json.loads(await response.text())
    assert [m["id"] for m in body["messages"]] == [missed]


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
async def test_a_websocket_renews_within_the_grace_and_loses_nothing(keyed_daemon: Any) -> None:
    running, clock = keyed_daemon
    armed = clock.armed()
    ws = await open_ws(running, token(clock, LIFE))
    try:
        await armed
        ws.send({"type": "subscribe", "channel": "exp.ws"})
        await ws.barrier()
        clock.advance(LIFE + 0.001)
        assert (await ws.next())["type"] == "expired"
        sent = await publish(running, "exp.ws", "in the grace")
        clock.advance(GRACE - 1)  # still open: messages flow while it renews
        ws.send({"type": "auth", "token": token(clock)})
        frames = [await ws.next(), await ws.next()]
        assert {f["type"] for f in frames} == {"message", "auth"}
        assert [f["id"] for f in frames if f["type"] == "message"] == [sent]
        clock.advance(GRACE)  # the old grace is over: no 4001 for a renewed token
        later = await publish(running, "exp.ws", "after")
        assert (await ws.next())["id"] == later
    finally:
        ws.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_a_websocket_without_a_new_token_is_closed_4001_and_resumes(
    keyed_daemon: Any,
) -> None:
    running, clock = keyed_daemon
    armed = clock.armed()
    ws = await open_ws(running, token(clock, LIFE))
    await armed
    ws.send({"type": "subscribe", "channel": "exp.ws2"})
    await ws.barrier()
    first = await publish(running, "exp.ws2", "one")
    assert (await ws.next())["id"] == first
    clock.advance(LIFE + 0.001)
    assert (await ws.next())["type"] == "expired"
    clock.advance(GRACE - 1)
    assert not ws.close_code.called
    clock.advance(1)
    assert await within(ws.close_code) == 4001
    missed = [await publish(running, "exp.ws2", "two"), await publish(running, "exp.ws2", "3")]
    again = await open_ws(running, token(clock))
    try:
        again.send({"type": "subscribe", "channel": "exp.ws2", "since": first})
        assert [f["id"] for f in await again.messages(2)] == missed
    finally:
        again.transport.abortConnection()
