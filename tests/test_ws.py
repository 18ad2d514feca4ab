"""The WebSocket transport over a real 127.0.0.1 port, with independent clients.

Clients are Autobahn's own client protocol (and, where the test needs bytes
Autobahn would not send, a hand-written handshake over TCP). Nothing sleeps:
every wait is a Deferred with a timeout. A client's ``barrier()`` sends a
``ping`` and waits for its ``pong``; frames are handled in order, so every
earlier command has then been acted on.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from typing import Any, Callable

import pytest
import pytest_twisted
import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateResponseAccept,
)
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from pushd.config import Settings
from pushd.web import ws
from pushd.wire import payload_text

TIMEOUT = 5.0


pytestmark = pytest.mark.both_brokers


def within(d: Deferred[Any], seconds: float = TIMEOUT) -> Deferred[Any]:
    return d.addTimeout(seconds, reactor)


class Client(WebSocketClientProtocol):
    """Collects server frames as JSON; records how the connection closed."""

    answer_pings = True

    def __init__(self) -> None:
        super().__init__()
        self.frames: DeferredQueue[Any] = DeferredQueue()
        self.close_code: Deferred[int | None] = Deferred()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.frames.put(json.loads(payload))

    def onPing(self, payload: bytes) -> None:
        if self.answer_pings:
            super().onPing(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.close_code.called:
            self.close_code.callback(code)

    def send(self, obj: Any) -> None:
        self.sendMessage(json.dumps(obj).encode())

    async def next(self) -> dict[str, Any]:
        return await within(self.frames.get())  # type: ignore[no-any-return]

    async def barrier(self) -> list[dict[str, Any]]:
        """Ping; return the frames that came before the pong."""
        self.send({"type": "ping"})
        before = []
        while (frame := await self.next())["type"] != "pong":
            before.append(frame)
        return before

    async def messages(self, n: int) -> list[dict[str, Any]]:
        out = [await self.next() for _ in range(n)]
        assert all(f["type"] == "message" for f in out), out
        return out


@pytest.fixture
def connect() -> Any:
    """``await connect(running, path, origin=..., deflate=...)`` → an open Client."""
    clients: list[Client] = []

    async def open_client(
        running: Any,
        path: str = "/ws",
        origin: str | None = None,
        deflate: bool = False,
        protocol: type[Client] = Client,
    ) -> Client:
        factory = WebSocketClientFactory(
            f"ws://127.0.0.1:{running.port}{path}", origin=origin, reactor=reactor
        )
        factory.protocol = protocol
        if deflate:
            factory.setProtocolOptions(
                perMessageCompressionOffers=[PerMessageDeflateOffer()],
                perMessageCompressionAccept=PerMessageDeflateResponseAccept,
            )
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", running.port)
        proto: Client = await within(endpoint.connect(factory))
        clients.append(proto)
        await within(proto.is_open)
        return proto

    yield open_client
    for client in clients:
        if client.transport is not None and client.transport.connected:
            client.transport.abortConnection()


def handshake(port: int, path: str, origin: str | None = None, extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    head = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    )
    if origin is not None:
        head += f"Origin: {origin}\r\n"
    return (head + extra + "\r\n").encode()


class RawHandshake(Protocol):
    """A handshake written by hand; ``status`` fires with the answer's code.

    With ``stop_reading`` the client never reads again after the answer: a
    WebSocket client that has stopped consuming.
    """

    def __init__(self, request: bytes, stop_reading: bool = False) -> None:
        self.request = request
        self.stop_reading = stop_reading
        self.buffer = b""
        self.status: Deferred[int] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        if self.status.called:
            return
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            code = int(self.buffer.split(b" ", 2)[1])
            if self.stop_reading:
                self.transport.pauseProducing()
            self.status.callback(code)

    def connectionLost(self, reason: Failure) -> None:
        if not self.status.called:
            self.status.errback(reason)
        self.lost.callback(None)


async def raw_status(port: int, path: str, origin: str | None) -> int:
    proto = RawHandshake(handshake(port, path, origin))
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await within(endpoint.connect(Factory.forProtocol(lambda: proto)))
    try:
        return await within(proto.status)  # type: ignore[no-any-return]
    finally:
        proto.transport.abortConnection()


def settings(**sections: dict[str, Any]) -> Callable[[Settings], None]:
    """An edit for ``start_daemon``: ``settings(websocket={"publish": True})``."""

    def edit(s: Settings) -> None:
        for section, values in sections.items():
            if isinstance(values, dict):
                for key, value in values.items():
                    setattr(getattr(s, section), key, value)
            else:
                setattr(s, section, values)

    return edit


async def publish(running: Any, channel: str, data: Any, event: str = "message") -> str:
    message = await running.broker.publish(channel, data, event)
    return message.id  # type: ignore[no-any-return]


# -- subscribing ------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_subscribe_live_then_since_replays_after_cursor(running: Any, connect: Any) -> None:
    client = await connect(running)
    client.send({"type": "subscribe", "channel": "news"})
    assert await client.barrier() == []
    ids = [await publish(running, "news", {"n": i}) for i in range(3)]
    frames = await client.messages(3)
    assert [f["id"] for f in frames] == ids
    assert frames[0] == {
        "type": "message", "id": ids[0], "channel": "news", "event": "message",
        "data": {"n": 0}, "time": frames[0]["time"],
    }

    late = await connect(running)
    late.send({"type": "subscribe", "channel": "news", "since": ids[0]})
    replayed = await late.barrier()
    assert [f["id"] for f in replayed] == ids[1:]
    newest = await publish(running, "news", "live")
    assert [f["id"] for f in await late.messages(1)] == [newest]
    assert [f["id"] for f in await client.messages(1)] == [newest]


@pytest_twisted.ensureDeferred
async def test_many_channels_each_with_its_cursor_and_unsubscribe(
    running: Any, connect: Any
) -> None:
    a1 = await publish(running, "a", "a1")
    await publish(running, "a", "a2")
    b1 = await publish(running, "b", "b1")
    client = await connect(running)
    client.send({"type": "subscribe", "channel": "a", "since": a1})
    client.send({"type": "subscribe", "channel": "b", "since": b1})
    client.send({"type": "subscribe", "channel": "c"})
    assert [f["data"] for f in await client.barrier()] == ["a2"]
    assert running.broker.subscribers("a") == 1
    assert running.broker.subscribers("c") == 1

    await publish(running, "c", "c1")
    await publish(running, "b", "b2")
    await publish(running, "a", "a3")
    assert [(f["channel"], f["data"]) for f in await client.messages(3)] == [
        ("c", "c1"), ("b", "b2"), ("a", "a3"),
    ]

    client.send({"type": "unsubscribe", "channel": "b"})
    assert await client.barrier() == []
    assert running.broker.subscribers("b") == 0
    await publish(running, "b", "not for us")
    await publish(running, "a", "a4")
    assert [f["data"] for f in await client.messages(1)] == ["a4"]
    assert await client.barrier() == []


@pytest_twisted.ensureDeferred
async def test_channel_url_subscribes_on_open_with_since(running: Any, connect: Any) -> None:
    first = await publish(running, "ticker", 1)
    ids = [await publish(running, "ticker", n) for n in (2, 3)]
    client = await connect(running, f"/channels/ticker/ws?since={first}")
    assert [f["id"] for f in await client.messages(2)] == ids
    live = await publish(running, "ticker", 4)
    assert [f["id"] for f in await client.messages(1)] == [live]

    fresh = await connect(running, "/channels/ticker/ws")
    assert await fresh.barrier() == []
    live = await publish(running, "ticker", 5)
    assert [f["id"] for f in await fresh.messages(1)] == [live]
    # The URL's channel counts like any other: subscribing again is refused.
    fresh.send({"type": "subscribe", "channel": "ticker"})
    assert (await fresh.next())["code"] == "already_subscribed"


@pytest_twisted.ensureDeferred
async def test_foreign_cursor_gets_reset_then_live(running: Any, connect: Any) -> None:
    last = await publish(running, "r", "old")
    client = await connect(running)
    client.send({"type": "subscribe", "channel": "r", "since": "0000-7"})
    assert await client.barrier() == [{"type": "reset", "channel": "r", "cursor": last}]
    client.send({"type": "subscribe", "channel": "empty", "since": "nonsense"})
    assert await client.barrier() == [{"type": "reset", "channel": "empty", "cursor": None}]
    assert running.registry.resets["ws"] == 2
    live = await publish(running, "r", "new")
    assert [f["id"] for f in await client.messages(1)] == [live]


@pytest_twisted.ensureDeferred
async def test_delete_tells_closed_and_ends_that_subscription(
    running: Any, connect: Any
) -> None:
    client = await connect(running)
    client.send({"type": "subscribe", "channel": "gone"})
    client.send({"type": "subscribe", "channel": "kept"})
    await client.barrier()
    await publish(running, "gone", "x")
    await client.messages(1)
    response = await within(treq.delete(f"{running.url}/channels/gone"))
    assert response.code in (200, 204)
    await response.content()
    assert await client.next() == {"type": "closed", "channel": "gone"}
    # The connection stays open for its other channels; "gone" is no longer held.
    client.send({"type": "unsubscribe", "channel": "gone"})
    assert (await client.next())["code"] == "not_subscribed"
    live = await publish(running, "kept", "y")
    assert [f["id"] for f in await client.messages(1)] == [live]


@pytest_twisted.ensureDeferred
async def test_ping_pong(running: Any, connect: Any) -> None:
    client = await connect(running)
    client.send({"type": "ping"})
    assert await client.next() == {"type": "pong"}


@pytest_twisted.ensureDeferred
async def test_subscription_limit(start_daemon: Any, connect: Any) -> None:
    running = start_daemon(settings(websocket={"max_subscriptions": 2}))
    client = await connect(running)
    for channel in ("one", "two", "three"):
        client.send({"type": "subscribe", "channel": channel})
    [error] = await client.barrier()
    assert error["type"] == "error" and error["code"] == "too_many_subscriptions"
    assert running.broker.subscribers("three") == 0
    client.send({"type": "unsubscribe", "channel": "one"})
    client.send({"type": "subscribe", "channel": "three"})
    assert await client.barrier() == []
    assert running.broker.subscribers("three") == 1


# -- publishing -------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_publish_is_off_by_default_and_stores_nothing(running: Any, connect: Any) -> None:
    client = await connect(running)
    client.send({"type": "publish", "channel": "quiet", "data": 1})
    [error] = await client.barrier()
    assert error["type"] == "error" and error["code"] == "forbidden"
    assert error["message"]
    assert await running.broker.info("quiet") is None


@pytest_twisted.ensureDeferred
async def test_publish_when_enabled(start_daemon: Any, connect: Any) -> None:
    running = start_daemon(settings(websocket={"publish": True}))
    reader = await connect(running, "/channels/chat/ws")
    writer = await connect(running)
    await reader.barrier()
    writer.send({"type": "publish", "channel": "chat", "data": {"text": "hi"}, "event": "said"})
    writer.send({"type": "publish", "channel": "chat", "data": "plain"})
    assert await writer.barrier() == []
    frames = await reader.messages(2)
    assert [(f["event"], f["data"]) for f in frames] == [
        ("said", {"text": "hi"}), ("message", "plain"),
    ]
    info = await running.broker.info("chat")
    assert info.history == 2 and info.last_id == frames[1]["id"]
    # Bad names are refused by the same rules as HTTP, and nothing is stored.
    writer.send({"type": "publish", "channel": "chat", "data": 1, "event": "reset"})
    writer.send({"type": "publish", "channel": "bad name", "data": 1})
    writer.send({"type": "publish", "channel": "chat", "data": 1, "event": "sp ace"})
    codes = [f["code"] for f in await writer.barrier()]
    assert codes == ["reserved_event", "bad_channel", "bad_event"]
    assert (await running.broker.info("chat")).history == 2


@pytest.mark.both_brokers(redis=False)  # max_channels is left to Redis's maxmemory there
@pytest_twisted.ensureDeferred
async def test_a_publish_the_store_refuses_names_its_channel(
    start_daemon: Any, connect: Any
) -> None:
    """A client with several publishes in flight can tell which one failed."""
    running = start_daemon(settings(websocket={"publish": True}, limits={"max_channels": 1}))
    writer = await connect(running)
    writer.send({"type": "publish", "channel": "first", "data": 1})
    writer.send({"type": "publish", "channel": "second", "data": 2})
    refused = await writer.next()  # the store may answer after a ping's pong
    assert (refused["type"], refused["code"], refused["channel"]) == (
        "error", "too_many_channels", "second"
    )
    assert await running.broker.info("second") is None


# -- bad input --------------------------------------------------------------------
BAD_FRAMES: list[tuple[str, bytes, str]] = [
    ("not json", b"hello", "bad_json"),
    ("lone surrogate", b'{"type":"ping","x":"\\ud800"}', "bad_json"),
    ("array", b"[1,2]", "bad_frame"),
    ("no type", b"{}", "bad_frame"),
    ("type not a string", b'{"type":7}', "bad_frame"),
    ("unknown type", b'{"type":"dance"}', "unknown_type"),
    ("unknown field", b'{"type":"subscribe","channel":"ok","sinse":"1"}', "bad_frame"),
    ("no channel", b'{"type":"subscribe"}', "bad_channel"),
    ("bad channel", b'{"type":"subscribe","channel":"a/b"}', "bad_channel"),
    ("long channel", b'{"type":"subscribe","channel":"' + b"x" * 129 + b'"}', "bad_channel"),
    ("since not a string", b'{"type":"subscribe","channel":"ok","since":5}', "bad_frame"),
    ("unsubscribe unknown", b'{"type":"unsubscribe","channel":"nope"}', "not_subscribed"),
    ("publish without data", b'{"type":"publish","channel":"ok"}', "bad_frame"),
    ("publish while off", b'{"type":"publish","channel":"ok","data":1}', "forbidden"),
]


@pytest_twisted.ensureDeferred
async def test_bad_frames_get_error_frames_and_the_connection_lives(
    running: Any, connect: Any
) -> None:
    client = await connect(running)
    for name, frame, code in BAD_FRAMES:
        client.sendMessage(frame)
        answer = await client.next()
        assert answer["type"] == "error", name
        assert answer["code"] == code, name
        assert isinstance(answer["message"], str) and answer["message"], name
    client.sendMessage(b'{"type":"ping"}', isBinary=True)
    answer = await client.next()
    assert (answer["type"], answer["code"]) == ("error", "binary_not_supported")
    # Still subscribed to nothing, still serving this connection.
    assert running.broker.subscriber_count() == 0
    client.send({"type": "subscribe", "channel": "ok"})
    assert await client.barrier() == []
    live = await publish(running, "ok", "fine")
    assert [f["id"] for f in await client.messages(1)] == [live]


def _too_big(client: Client) -> None:
    client.sendMessage(b'{"type":"ping","pad":"' + b"x" * 2048 + b'"}')


def _bad_utf8(client: Client) -> None:
    client.sendMessage(b'{"type":"ping","x":"\xff\xfe"}')


def _reserved_opcode(client: Client) -> None:
    client.sendFrame(opcode=3, payload=b"x")


PROTOCOL_VIOLATIONS = [
    ("message over [limits] message_size", _too_big, 1009),
    ("text frame that is not UTF-8", _bad_utf8, 1007),
    ("reserved opcode", _reserved_opcode, 1002),
]


@pytest.mark.parametrize(("name", "send", "code"), PROTOCOL_VIOLATIONS)
@pytest_twisted.ensureDeferred
async def test_protocol_violations_close_with_their_code_and_the_daemon_serves_on(
    start_daemon: Any, connect: Any, name: str, send: Callable[[Client], None], code: int
) -> None:
    running = start_daemon(settings(limits={"message_size": 1024}))
    victim = await connect(running, "/channels/v/ws")
    await victim.barrier()
    send(victim)
    assert await within(victim.close_code) == code, name
    assert running.broker.subscribers("v") == 0
    assert running.registry.count("ws") == 0
    # A frame just under the limit is fine, and new clients are served.
    other = await connect(running, "/channels/v/ws")
    other.sendMessage(b'{"type":"ping","pad":"' + b"x" * 900 + b'"}')
    assert (await other.next())["code"] == "bad_frame"  # "pad" is not a field
    live = await publish(running, "v", "after")
    assert [f["id"] for f in await other.messages(1)] == [live]


@pytest_twisted.ensureDeferred
async def test_bad_channel_in_url_is_400_before_upgrade(running: Any) -> None:
    assert await raw_status(running.port, "/channels/a%20b/ws", None) == 400
    assert await raw_status(running.port, "/channels/ok/ws", None) == 101
    response = await within(treq.get(f"{running.url}/ws"))
    assert response.code == 426  # a plain GET is not a WebSocket
    await response.content()


@pytest_twisted.ensureDeferred
async def test_channel_url_answers_alike_through_the_fast_lane_and_klein(
    running: Any, connect: Any
) -> None:
    """``/channels/{ch}/ws`` skips Klein's router; a percent-escape goes through it."""
    lane = await connect(running, "/channels/ticker/ws")
    klein = await connect(running, "/channels/%74icker/ws")
    assert await lane.barrier() == [] and await klein.barrier() == []
    live = await publish(running, "ticker", 1)
    assert [f["id"] for f in await lane.messages(1)] == [live]
    assert [f["id"] for f in await klein.messages(1)] == [live]
    # a bad channel is the same 400 either way, and a GET that is no upgrade the same 426
    assert await raw_status(running.port, "/channels/bad!name/ws", None) == 400
    assert await raw_status(running.port, "/channels/bad%21name/ws", None) == 400
    for path in ("/channels/ticker/ws", "/channels/%74icker/ws"):
        response = await within(treq.get(f"{running.url}{path}"))
        assert response.code == 426
        await response.content()
    assert running.broker.subscribers("ticker") == 2


# -- origins ----------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_origin_allowed_or_refused(start_daemon: Any) -> None:
    running = start_daemon(settings(allowed_origins=["https://app.example"]))
    port = running.port
    cases = [
        (None, 101),  # no Origin: curl, servers, native clients
        (f"http://127.0.0.1:{port}", 101),  # same origin
        ("https://app.example", 101),  # listed
        ("https://evil.example", 403),  # unlisted
        (f"http://127.0.0.1:{port + 1}", 403),  # same host, other port
        ("null", 403),  # sandboxed page, file://
    ]
    for origin, status in cases:
        assert await raw_status(port, "/ws", origin) == status, origin
        assert await raw_status(port, "/channels/x/ws", origin) == status, origin


@pytest_twisted.ensureDeferred
async def test_default_policy_is_same_origin_only(running: Any, connect: Any) -> None:
    assert await raw_status(running.port, "/ws", "https://app.example") == 403
    client = await connect(running, origin=f"http://127.0.0.1:{running.port}")
    client.send({"type": "ping"})
    assert await client.next() == {"type": "pong"}


# -- the same promise as SSE --------------------------------------------------------
class SseReader(Protocol):
    """Parses an SSE body; ``done`` fires with the first ``want`` events."""

    def __init__(self, want: int) -> None:
        self.want = want
        self.buffer = b""
        self.events: list[dict[str, str]] = []
        self.done: Deferred[list[dict[str, str]]] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            event: dict[str, str] = {}
            for line in block.decode().split("\n"):
                if line.startswith(":") or ":" not in line:
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                event[name] = event[name] + "\n" + value if name in event else value
            if "data" in event:
                self.events.append(event)
        if len(self.events) >= self.want and not self.done.called:
            self.done.callback(self.events[: self.want])

    def connectionLost(self, reason: Failure) -> None:
        if not self.done.called:
            self.done.errback(reason)


@pytest_twisted.ensureDeferred
async def test_websocket_and_sse_see_the_same_ids_in_the_same_order(
    running: Any, connect: Any
) -> None:
    start = await publish(running, "same", "before")
    replayed = [await publish(running, "same", {"n": n}) for n in range(3)]
    client = await connect(running)
    client.send({"type": "subscribe", "channel": "same", "since": start})
    response = await within(
        treq.get(
            f"{running.url}/channels/same/events?since={start}",
            unbuffered=True,
            persistent=False,
        )
    )
    total = 3 + 5
    reader = SseReader(total)
    response.deliverBody(reader)
    ws_frames = await client.barrier()
    for i, data in enumerate(["line one\nline two", {"k": [1, 2]}, "", "x", 42]):
        event = "custom" if i == 1 else "message"
        body = json.dumps(data).encode() if not isinstance(data, str) else data.encode()
        kind = b"application/json" if not isinstance(data, str) else b"text/plain"
        posted = await within(
            treq.post(
                f"{running.url}/channels/same?event={event}",
                body,
                headers={b"Content-Type": [kind]},
            )
        )
        assert posted.code == 201
        await posted.content()
    ws_frames += await client.messages(total - len(ws_frames))
    sse_events = await within(reader.done)
    reader.transport.stopProducing()

    assert [f["id"] for f in ws_frames][:3] == replayed
    assert [f["id"] for f in ws_frames] == [e["id"] for e in sse_events]
    assert [payload_text(f["data"]) for f in ws_frames] == [e["data"] for e in sse_events]
    assert [f["event"] for f in ws_frames] == [e.get("event", "message") for e in sse_events]


# -- keepalive and drain ----------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_peer_that_stops_answering_pings_is_dropped_and_unsubscribed(
    start_daemon: Any, connect: Any
) -> None:
    class Deaf(Client):
        answer_pings = False

    running = start_daemon(settings(websocket={"ping_interval": 0.5, "ping_timeout": 0.5}))
    alive = await connect(running, "/channels/k/ws")
    dead = await connect(running, "/channels/k/ws", protocol=Deaf)
    assert running.broker.subscribers("k") == 2
    await within(dead.close_code, 5)
    assert running.broker.subscribers("k") == 1
    assert running.registry.count("ws") == 1
    live = await publish(running, "k", "still here")
    assert [f["id"] for f in await alive.messages(1)] == [live]


@pytest_twisted.ensureDeferred
async def test_http_idle_timeout_does_not_close_a_websocket(
    start_daemon: Any, connect: Any
) -> None:
    class Counting(Client):
        def onPing(self, payload: bytes) -> None:
            super().onPing(payload)
            self.pings.put(payload)

        def onOpen(self) -> None:
            self.pings: DeferredQueue[bytes] = DeferredQueue()

    running = start_daemon(settings(websocket={"ping_interval": 0.3, "ping_timeout": 2.0}))
    # the HTTP server's deadlines, shortened far below two ping intervals
    running.daemon.site.settings.idle_timeout = 0.2
    running.daemon.site.settings.header_timeout = 0.2
    client = await connect(running, "/channels/idle/ws", protocol=Counting)
    for _ in range(2):  # two pings apart: well past the HTTP idle timeout
        await within(client.pings.get())
    assert await client.barrier() == []
    assert running.broker.subscribers("idle") == 1
    # Had the HTTP channel's timer fired it would have unregistered the
    # outlet: the connection would live on, but a slow reader go unbounded.
    [server] = running.registry.connections["ws"]
    assert server.transport.producer is server.outlet  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_end_politely_closes_with_1001(running: Any, connect: Any) -> None:
    client = await connect(running, "/channels/d/ws")
    await client.barrier()
    [conn] = running.registry.connections["ws"]
    conn.end_politely()
    assert await within(client.close_code) == 1001
    assert running.broker.subscribers("d") == 0
    assert running.registry.count("ws") == 0


class RawRecorder(RawHandshake):
    """A hand-written client that keeps every byte after the handshake's answer;
    ``closing`` fires once the server's close frame has come."""

    def __init__(self, request: bytes) -> None:
        super().__init__(request)
        self.after = b""
        self.closing: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if self.status.called:
            self.after += data
        else:
            super().dataReceived(data)
            if self.status.called:
                self.after = self.buffer.split(b"\r\n\r\n", 1)[1]
        if not self.closing.called and 8 in [op for op, _ in server_frames(self.after)]:
            self.closing.callback(None)


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """``(opcode, payload)`` of the whole unmasked frames at the start of ``data``."""
    frames = []
    while len(data) >= 2:
        size, start = data[1] & 0x7F, 2
        if size == 126:
            size, start = int.from_bytes(data[2:4], "big"), 4
        if len(data) < start + size:
            break
        frames.append((data[0] & 0x0F, data[start : start + size]))
        data = data[start + size :]
    return frames


@pytest_twisted.ensureDeferred
async def test_no_data_frame_follows_the_servers_close_frame(running: Any, connect: Any) -> None:
    """While the server waits for the answer to its close frame, messages of the
    connection's channels are not sent: no data frame may follow a close."""
    raw = RawRecorder(handshake(running.port, "/channels/cl/ws"))
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", running.port)
    await within(endpoint.connect(Factory.forProtocol(lambda: raw)))
    assert await within(raw.status) == 101
    witness = await connect(running, "/channels/cl/ws")  # swept after raw
    await witness.barrier()
    before = await publish(running, "cl", "before")
    assert [f["id"] for f in await witness.messages(1)] == [before]

    raw.transport.write(b"\x83\x81\x00\x00\x00\x00x")  # reserved opcode 3: a protocol error
    await within(raw.closing)
    after = await publish(running, "cl", "after")
    assert [f["id"] for f in await witness.messages(1)] == [after]
    await witness.barrier()  # raw's bytes, sent before the witness's, have been read

    frames = [(op, p) for op, p in server_frames(raw.after) if op in (1, 2, 8)]
    assert [op for op, _ in frames] == [1, 8]
    assert json.loads(frames[0][1])["id"] == before
    assert frames[1][1][:2] == (1002).to_bytes(2, "big")
    raw.transport.abortConnection()


# -- backpressure -----------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_client_that_does_not_read_is_dropped_while_another_gets_everything(
    start_daemon: Any, connect: Any
) -> None:
    running = start_daemon(
        settings(limits={"queue": 32 * 1024}, websocket={"ping_interval": 0.0})
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", running.port))
    sock.setblocking(False)
    slow = RawHandshake(handshake(running.port, "/channels/flood/ws"), stop_reading=True)
    reactor.adoptStreamConnection(sock.fileno(), socket.AF_INET, Factory.forProtocol(lambda: slow))
    sock.close()  # the reactor holds its own duplicate
    assert await within(slow.status) == 101

    good = await connect(running, "/channels/flood/ws")
    await good.barrier()
    assert running.broker.subscribers("flood") == 2

    payload = "x" * 8192
    sent: list[str] = []
    received: list[str] = []
    while running.registry.dropped["ws"] == 0:
        assert len(sent) < 3000, "the slow client was never dropped"
        sent.append(await publish(running, "flood", payload))
        received += [f["id"] for f in await good.messages(1)]
    for _ in range(5):
        sent.append(await publish(running, "flood", payload))
    received += [f["id"] for f in await good.messages(5)]

    assert received == sent
    assert running.registry.dropped["ws"] == 1
    assert running.broker.subscribers("flood") == 1
    assert running.registry.count("ws") == 1
    slow.transport.abortConnection()


# -- framing once -----------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_messages_are_framed_once_except_for_deflate_connections(
    running: Any, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared: list[bytes] = []
    per_connection: dict[int, int] = {}
    real_prepare = ws.WsFactory.prepareMessage
    real_send = ws.WsProtocol.sendMessage

    def count_prepare(self: Any, payload: bytes, *a: Any, **kw: Any) -> Any:
        prepared.append(payload)
        return real_prepare(self, payload, *a, **kw)

    def count_send(self: Any, payload: bytes, *a: Any, **kw: Any) -> Any:
        if payload.startswith(b'{"type":"message"'):
            per_connection[id(self)] = per_connection.get(id(self), 0) + 1
        return real_send(self, payload, *a, **kw)

    monkeypatch.setattr(ws.WsFactory, "prepareMessage", count_prepare)
    monkeypatch.setattr(ws.WsProtocol, "sendMessage", count_send)

    plain = [await connect(running, "/channels/fan/ws") for _ in range(3)]
    squeezed = await connect(running, "/channels/fan/ws", deflate=True)
    assert squeezed.websocket_extensions_in_use, "permessage-deflate was not negotiated"
    assert not plain[0].websocket_extensions_in_use
    for client in [*plain, squeezed]:
        await client.barrier()
    servers = {c.deflate: c for c in running.registry.connections["ws"]}  # type: ignore[attr-defined]

    ids = [await publish(running, "fan", {"n": n, "pad": "abc" * 50}) for n in range(4)]
    for client in [*plain, squeezed]:
        assert [f["id"] for f in await client.messages(4)] == ids

    assert len(prepared) == 4  # one frame per message, shared by the plain clients
    assert per_connection == {id(servers[True]): 4}  # only the deflate one frames its own
    assert running.registry.deliveries["ws"] == 16


@pytest_twisted.ensureDeferred
async def test_deflate_refused_when_configured_off(start_daemon: Any, connect: Any) -> None:
    running = start_daemon(settings(websocket={"deflate": False}))
    client = await connect(running, "/channels/z/ws", deflate=True)
    assert not client.websocket_extensions_in_use
    await client.barrier()
    live = await publish(running, "z", "plain")
    assert [f["id"] for f in await client.messages(1)] == [live]


@pytest_twisted.ensureDeferred
async def test_a_connection_emits_no_debug_events(running: Any, connect: Any) -> None:
    """Autobahn's per-handshake debug logging stays off (it cost a third of a connect)."""
    from twisted.logger import LogLevel, globalLogPublisher

    events: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_level") == LogLevel.debug:
            events.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        client = await connect(running, "/channels/quiet/ws")
        await client.barrier()
        await publish(running, "quiet", 1)
        await client.messages(1)
        client.sendClose()
        assert await within(client.close_code) == 1000
    finally:
        globalLogPublisher.removeObserver(observer)
    assert [e.get("log_namespace") for e in events] == []
