"""The one subscription path (pushd.web.access): the authorization hook runs
before any byte of a stream, and a broker that answers later still hands live
delivery to the fan-out groups, with nothing lost or doubled at the seam."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import error, reactor
from twisted.internet.defer import Deferred

from pushd.broker.memory import MemoryBroker
from pushd.config import Settings
from pushd.errors import PushdError
from pushd.tap import Daemon
from tests.clients import RawHTTP, dechunk, get_request, split_response
from tests.clients import subscribed as until_subscribed
from tests.helpers import parse_sse
from tests.process import bounded
from tests.test_ops_support import ws_frames, ws_handshake
from tests.test_ws import connect  # noqa: F401  (a fixture)

pytestmark = pytest.mark.both_brokers


def refuse_secret(who: object, action: str, channel: str) -> None:
    if channel.startswith("secret"):
        raise PushdError(403, "forbidden", f"not allowed to {action} {channel}")


@pytest.mark.parametrize(
    "path", ["events", "stream", "poll", "longpoll?timeout=5", "events?envelope=1"]
)
@pytest_twisted.ensureDeferred
async def test_a_refused_subscription_is_a_json_error_before_any_stream_byte(
    running: Any, path: str
) -> None:
    running.daemon.context.authorize = refuse_secret
    raw = await RawHTTP.open(
        running.port, get_request(f"/channels/secret/{path}", "Connection: close")
    )
    await raw.until(lambda _: raw.ended)
    status, headers, body = split_response(raw.data)
    assert status == b"HTTP/1.1 403 Forbidden"
    assert headers["content-type"] == "application/json"
    if headers.get("transfer-encoding") == "chunked":
        body = b"".join(dechunk(body)[0])
    assert json.loads(body)["error"] == "forbidden"
    assert running.broker.subscribers("secret") == 0
    assert not any(running.registry.connections.values())


@pytest_twisted.ensureDeferred
async def test_a_refused_websocket_subscribe_gets_an_error_frame(
    running: Any, connect: Any  # noqa: F811
) -> None:
    running.daemon.context.authorize = refuse_secret
    client = await connect(running)
    client.send({"type": "subscribe", "channel": "secret"})
    frame = await client.next()
    assert frame["type"] == "error" and frame["code"] == "forbidden"
    client.send({"type": "subscribe", "channel": "open"})
    assert await client.barrier() == []
    assert running.broker.subscribers("secret") == 0
    assert running.broker.subscribers("open") == 1


@pytest.mark.both_brokers(redis=False)  # publishes straight into the memory broker's hub
@pytest_twisted.ensureDeferred
async def test_streams_join_their_group_once_live_and_lose_nothing_at_the_seam(
    running: Any,
) -> None:
    """Publishes land while the replay may still be pending (the later broker
    replays on the next turn): each arrives once, in order, and the stream
    ends up in its channel's group."""
    first = await (await treq.post(running.url + "/channels/g", data=b"0")).json()
    joined = until_subscribed(running.broker, "g", inside=True)
    raw = await RawHTTP.open(
        running.port, get_request(f"/channels/g/events?since={first['id']}")
    )
    await joined  # resumes inside broker.subscribe: the replay is not done yet
    for i in range(1, 6):  # straight into the hub, in this very turn
        MemoryBroker.publish(running.broker, "g", str(i))
    await raw.contains(b"data: 5\n")
    group = running.daemon.context.groups[("g", "sse+chunk")]
    (streamer,) = running.registry.connections["sse"]
    assert streamer in group.members
    await (await treq.post(running.url + "/channels/g", data=b"6")).content()
    await raw.contains(b"data: 6\n")
    events = parse_sse(b"".join(dechunk(split_response(raw.data)[2])[0]).decode())
    assert [e["data"] for e in events if "retry" not in e] == [str(i) for i in range(1, 7)]
    raw.close()


def refuse_publishing(who: object, action: str, channel: str) -> None:
    if action == "publish" and channel.startswith("secret"):
        raise PushdError(403, "forbidden", f"not allowed to publish to {channel}")


@pytest_twisted.ensureDeferred
async def test_every_client_publish_passes_the_hook_and_a_refusal_stores_nothing(
    start_daemon: Any, connect: Any  # noqa: F811
) -> None:
    running = start_daemon(lambda s: setattr(s.websocket, "publish", True))
    running.daemon.context.authorize = refuse_publishing
    one = await treq.post(running.url + "/channels/secret", data=b"x")
    assert one.code == 403 and (await one.json())["error"] == "forbidden"
    batch = await treq.post(
        running.url + "/publish", json=[{"channel": "open", "data": 1},
                                        {"channel": "secret", "data": 2}],
    )
    assert batch.code == 403 and (await batch.json())["error"] == "forbidden"
    client = await connect(running)
    client.send({"type": "publish", "channel": "secret", "data": 3})
    frame = await client.next()
    assert frame["type"] == "error" and frame["code"] == "forbidden"
    assert running.broker.channel_count() == 0  # the batch was all or nothing
    ok = await treq.post(running.url + "/channels/open", data=b"y")
    assert ok.code == 201
    await ok.content()


class HeldBroker(MemoryBroker):
    """A memory broker whose live-only subscriptions start when the test says,
    from where the channel is *then*: what a Redis node does when it does not
    follow a channel yet (it reads the channel's position from Redis, later)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.held: Deferred[Any] = Deferred()

    def _replay(self, sub: Any, since: str | None, now: int) -> None:
        def release() -> None:
            ch = self._channels.get(sub.channel)
            MemoryBroker._replay(self, sub, since, ch.last_seq if ch is not None else 0)

        self.held.callback(release)


@pytest.mark.parametrize(
    ("path", "framing"),
    [("events", b"data: %s\n"), ("stream", b'"data":"%s"')],
)
@pytest_twisted.ensureDeferred
async def test_a_stream_is_answered_only_once_its_subscription_is_made(
    path: str, framing: bytes
) -> None:
    """DESIGN "The transports": a stream's status line and headers go out as
    soon as the subscription is made, before any message. A client that has
    them may have a message published elsewhere at once and must get it; so
    while the broker has not fixed where the subscription starts, nothing is
    answered. Here a message is published while the subscription is held: it
    is before the answer, and the first message after the answer arrives."""
    settings = Settings()
    settings.listen = ["tcp:0:interface=127.0.0.1"]
    settings.sources = []
    daemon = Daemon(settings, reactor, broker_class=HeldBroker)
    daemon.startService()
    try:
        port = daemon.listeners[0].port.getHost().port  # type: ignore[union-attr]
        raw = await RawHTTP.open(port, get_request(f"/channels/held/{path}"))
        release = await bounded(daemon.broker.held)
        assert not any(daemon.registry.connections.values())  # no stream opened yet
        await daemon.broker.publish("held", "before")  # before the answer: not owed
        release()
        await bounded(raw.contains(b"\r\n\r\n"))
        assert raw.data.startswith(b"HTTP/1.1 200")
        after = await daemon.broker.publish("held", "after")
        await bounded(raw.contains(framing % b"after"))
        assert b"before" not in raw.data and after.id.encode() in raw.data
        raw.close()
    finally:
        await daemon.stopService()


@pytest_twisted.ensureDeferred
async def test_a_stream_that_goes_live_during_a_drain_ends_politely() -> None:
    """A drain tells every open stream goodbye; one still waiting for its
    subscription then (so not yet open) is told as soon as it opens: it ends
    with its last chunk, and the client returns elsewhere with its cursor,
    rather than being held until the drain's timeout cuts it."""
    settings = Settings()
    settings.listen = ["tcp:0:interface=127.0.0.1"]
    settings.sources = []
    settings.drain.timeout = 30
    daemon = Daemon(settings, reactor, broker_class=HeldBroker)
    daemon.startService()
    port = daemon.listeners[0].port.getHost().port  # type: ignore[union-attr]
    raw = await RawHTTP.open(port, get_request("/channels/held/events"))
    release = await bounded(daemon.broker.held)
    stopped = daemon.stopService()
    with pytest.raises(error.ConnectionRefusedError):  # the drain told the open streams
        await RawHTTP.open(port, b"")
    release()
    await bounded(raw.until(lambda _: raw.ended), 5)
    assert raw.data.startswith(b"HTTP/1.1 200") and raw.data.endswith(b"\r\n0\r\n\r\n")
    await bounded(stopped)


@pytest_twisted.ensureDeferred
async def test_a_channel_websocket_is_answered_only_once_its_subscription_is_made() -> None:
    """``/channels/{ch}/ws`` is subscribed on open: its 101 is its answer, so
    it goes out once the subscription is made, as a stream's head does."""
    settings = Settings()
    settings.listen = ["tcp:0:interface=127.0.0.1"]
    settings.sources = []
    daemon = Daemon(settings, reactor, broker_class=HeldBroker)
    daemon.startService()
    try:
        port = daemon.listeners[0].port.getHost().port  # type: ignore[union-attr]
        raw = await RawHTTP.open(port, ws_handshake("/channels/held/ws"))
        release = await bounded(daemon.broker.held)
        assert daemon.broker.subscribers("held") == 1
        assert not any(daemon.registry.connections.values())  # not open yet
        await daemon.broker.publish("held", "before")  # before the answer: not owed
        release()
        await bounded(raw.contains(b"\r\n\r\n"))
        assert raw.data.startswith(b"HTTP/1.1 101")
        after = await daemon.broker.publish("held", "after")
        await bounded(raw.until(lambda d: any(b'"after"' in p for _, p in ws_frames(d))))
        frames = [json.loads(p) for _, p in ws_frames(raw.data)]
        assert [(f["id"], f["data"]) for f in frames] == [(after.id, "after")]
        raw.close()
    finally:
        await daemon.stopService()
