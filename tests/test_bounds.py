"""Every byte bounded (DESIGN.md): poll and long-poll answers, the history of
the whole broker, and what waits for one WebSocket connection.

Bounds are checked on bytes a client sees or the server counts (an answer's
body, the broker's history total, an outlet's queue), never on process RSS.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import hypothesis
import pytest
import pytest_twisted
import treq
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock

from pushd.broker.memory import MemoryBroker
from pushd.config import ConfigError, Settings, check
from pushd.wire import message_bytes
from tests.clients import RawHTTP, dechunk, get_request, split_response, subscribed
from tests.helpers import Recorder, parse_sse
from tests.test_ops_support import ws_client_frame
from tests.test_ws import RawHandshake, connect, handshake, settings, within  # noqa: F401

BIG = "x" * (60 * 1024)


async def get_raw(url: str) -> tuple[int, bytes]:
    response = await treq.get(url, persistent=False)
    return response.code, await response.content()


def publish_all(running: Any, channel: str, bodies: list[Any]) -> list[str]:
    return [running.broker.publish(channel, body).result.id for body in bodies]


# -- poll and long-poll answers --------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_poll_answer_stays_under_the_default_max_bytes(running: Any) -> None:
    """Finding 4: 40 messages of 60 KiB asked for at once make one answer of
    at most 1 MiB, not one of 2.4 MB."""
    ids = publish_all(running, "big", [BIG] * 40)
    code, body = await get_raw(running.url + "/channels/big/poll?limit=1000")
    assert code == 200
    assert len(body) <= 1024 * 1024
    page = json.loads(body)
    got = [m["id"] for m in page["messages"]]
    assert got == ids[: len(got)] and len(got) == 17  # the oldest first, as many as fit
    assert page["cursor"] == got[-1]  # the cursor is the last message included


@pytest.mark.parametrize("transport", ["poll", "longpoll"])
@pytest_twisted.ensureDeferred
async def test_paging_with_the_cursor_gets_every_message_once_in_order(
    start_daemon: Any, transport: str
) -> None:
    max_bytes = 5000

    def edit(s: Settings) -> None:
        s.poll.max_bytes = max_bytes

    running = start_daemon(edit)
    # sizes around the bound, and one message larger than it on its own
    bodies: list[Any] = [("m%d " % i) + "y" * (37 * i % 1900) for i in range(60)]
    bodies[25] = "z" * (3 * max_bytes)
    bodies[26] = {"json": "w" * 4000}
    ids = publish_all(running, "p", bodies)
    extra = "&timeout=0" if transport == "longpoll" else ""

    got: list[str] = []
    data: list[Any] = []
    pages = 0
    code, body = await get_raw(running.url + f"/channels/p/{transport}?since={ids[0]}{extra}")
    got, data = [ids[0]], [bodies[0]]
    while True:
        assert code == 200, body
        page = json.loads(body)
        if not page["messages"]:
            break
        pages += 1
        if len(page["messages"]) > 1:
            assert len(body) <= max_bytes  # an answer of several messages fits the bound
        else:
            assert len(body) <= max_bytes or page["messages"][0]["id"] == ids[25]
        got += [m["id"] for m in page["messages"]]
        data += [m["data"] for m in page["messages"]]
        assert page["cursor"] == got[-1]
        code, body = await get_raw(
            running.url + f"/channels/p/{transport}?since={page['cursor']}{extra}"
        )
    assert got == ids  # every message once, in order
    assert data == bodies
    assert pages > 10  # it did page


@pytest_twisted.ensureDeferred
async def test_poll_without_since_pages_from_the_oldest_of_the_window(start_daemon: Any) -> None:
    running = start_daemon(lambda s: setattr(s.poll, "max_bytes", 2000))
    ids = publish_all(running, "w", ["v" * 300] * 20)
    code, body = await get_raw(running.url + "/channels/w/poll?limit=10")
    page = json.loads(body)
    assert code == 200 and len(body) <= 2000
    window = ids[-10:]
    got = [m["id"] for m in page["messages"]]
    assert got == window[: len(got)] and 1 <= len(got) < 10
    while page["messages"]:
        code, body = await get_raw(running.url + f"/channels/w/poll?since={page['cursor']}")
        page = json.loads(body)
        got += [m["id"] for m in page["messages"]]
    assert got == window


def test_the_new_settings_are_checked() -> None:
    settings = Settings()
    settings.poll.max_bytes = 0
    with pytest.raises(ConfigError, match=r"\[poll\] max_bytes"):
        check(settings)
    settings = Settings()
    settings.history.max_bytes = settings.limits.message_size - 1
    with pytest.raises(ConfigError, match=r"\[history\] max_bytes"):
        check(settings)


# -- all history together ----------------------------------------------------------
HISTORY_BYTES = 1024 * 1024


def held(broker: Any) -> list[Any]:
    """Every message the broker holds, in publish order."""
    return sorted((m for ch in broker._channels.values() for m in ch.history), key=lambda m: m.seq)


@pytest_twisted.ensureDeferred
async def test_history_of_many_channels_stays_under_max_bytes_oldest_first(
    start_daemon: Any,
) -> None:
    """Finding 5: 300 messages of 60 KiB to 100 channels keep at most 1 MiB,
    the newest; a cursor behind what was dropped gets reset on poll and SSE."""
    running = start_daemon(lambda s: setattr(s.history, "max_bytes", HISTORY_BYTES))
    broker = running.broker
    ids = []
    for i in range(300):
        code, body = await post_json(running.url + f"/channels/c{i % 100}", BIG)
        assert code == 201, body
        ids.append(json.loads(body)["id"])
    kept = held(broker)
    assert sum(message_bytes(m) for m in kept) <= HISTORY_BYTES
    assert len(kept) == HISTORY_BYTES // message_bytes(kept[0])  # as many as fit
    assert [m.id for m in kept] == ids[-len(kept) :]  # the oldest of the whole broker went first
    assert broker.bytes == sum(message_bytes(m) for m in kept)

    # GET /channels/{ch} counts what is kept
    code, body = await get_raw(running.url + "/channels/c99")
    assert code == 200 and json.loads(body)["history"] == 1
    code, body = await get_raw(running.url + "/channels/c0")
    assert code == 404  # nothing kept and nobody subscribed: the channel is gone

    # a cursor behind what was dropped, on a channel that still has history
    channel = kept[0].channel
    number = int(channel[1:])
    # its first message (dropped, and the one after it too), and its last
    behind, last = ids[number], ids[200 + number]
    code, body = await get_raw(running.url + f"/channels/{channel}/poll?since={behind}")
    assert json.loads(body) == {"messages": [], "cursor": last, "reset": True}
    path = f"/channels/{channel}/events?lastEventId={behind}"
    raw = await RawHTTP.open(running.port, get_request(path))
    await raw.contains(b"event: reset")
    events = parse_sse(b"".join(dechunk(split_response(raw.data)[2])[0]).decode())
    resets = [e for e in events if e.get("event") == "reset"]
    assert resets and json.loads(resets[0]["data"])["cursor"] == last
    raw.close()


async def post_json(url: str, data: Any) -> tuple[int, bytes]:
    response = await treq.post(
        url, data=json.dumps(data).encode(), headers={"Content-Type": "application/json"},
        persistent=False,
    )
    return response.code, await response.content()


def test_expired_trimmed_and_deleted_messages_leave_the_total() -> None:
    clock = Clock()
    broker = MemoryBroker(clock, size=3, ttl=10, epoch="ep", max_bytes=10_000)
    for _ in range(5):
        broker.publish("a", "x" * 100)
    assert broker.bytes == sum(message_bytes(m) for m in held(broker))
    assert len(held(broker)) == 3  # trimmed ones left the total
    broker.publish("b", "y" * 100)
    broker.delete("a")
    assert broker.bytes == sum(message_bytes(m) for m in held(broker)) > 0
    clock.advance(11)
    broker.sweep()
    assert broker.bytes == 0 and held(broker) == []


sizes = st.integers(0, 900)
script = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.sampled_from("abcd"), sizes),
        st.tuples(st.just("publish"), st.sampled_from("abcd"), sizes),
        st.tuples(st.just("delete"), st.sampled_from("abcd"), st.just(0)),
    ),
    max_size=80,
)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(script)
def test_history_bound_matches_a_model_of_oldest_first(ops: list[tuple[str, str, int]]) -> None:
    """Per-channel trimming, deletes and the global bound, against a plain model:
    the same messages kept, the same total, and each channel's floor at its
    last dropped message (cursors before it get reset)."""
    max_bytes, size = 3000, 4
    broker = MemoryBroker(Clock(), size=size, ttl=1e9, epoch="ep", max_bytes=max_bytes)
    model: list[tuple[int, str, int]] = []  # (seq, channel, weight), publish order
    floor: dict[str, int] = {}  # per channel: its last dropped message, or its start
    for op, channel, n in ops:
        if op == "delete":
            broker.delete(channel)
            model = [e for e in model if e[1] != channel]
            floor.pop(channel, None)
            continue
        message = broker.publish(channel, "z" * n).result
        floor.setdefault(channel, message.seq - 1)
        model.append((message.seq, channel, message_bytes(message)))
        mine = [e for e in model if e[1] == channel]
        if len(mine) > size:
            model.remove(mine[0])
            floor[channel] = mine[0][0]
        while sum(e[2] for e in model) > max_bytes:
            seq, name, _ = model.pop(0)
            floor[name] = seq
        for name in list(floor):  # a channel left with nothing (and nobody) is freed
            if not any(e[1] == name for e in model):
                del floor[name]
        assert [m.seq for m in held(broker)] == [e[0] for e in model]
        assert broker.bytes == sum(e[2] for e in model) <= max_bytes
        assert {name: ch.floor for name, ch in broker._channels.items()} == floor
        for name, seq in floor.items():  # a cursor behind the floor: reset
            rec = Recorder()
            broker.subscribe(name, rec, f"ep-{seq - 1}").cancel()
            assert rec.events[:1] == [("reset", broker._channels[name].last_id)]
    assert len(broker._heads) <= 2 * len(broker._channels) + 65


# -- what waits for one WebSocket connection ----------------------------------------
def ping_frames(n: int) -> bytes:
    """``n`` masked client ping frames of the largest control payload (125 bytes)."""
    return ws_client_frame(0x9, b"p" * 125) * n


@pytest_twisted.ensureDeferred
async def test_a_ping_flood_that_never_reads_is_closed_and_a_canary_loses_nothing(
    start_daemon: Any, connect: Any  # noqa: F811 - the fixture imported from test_ws
) -> None:
    """Finding 6: the pongs for a client that sends pings and never reads
    count against ``[limits] queue``; past it the connection is closed."""
    queue = 32 * 1024
    running = start_daemon(settings(limits={"queue": queue}, websocket={"ping_interval": 0.0}))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", running.port))
    sock.setblocking(False)
    flood = RawHandshake(handshake(running.port, "/channels/flood/ws"), stop_reading=True)
    reactor.adoptStreamConnection(sock.fileno(), socket.AF_INET, Factory.forProtocol(lambda: flood))
    sock.close()  # the reactor holds its own duplicate
    assert await within(flood.status) == 101
    [server] = running.registry.connections["ws"]

    canary = await connect(running, "/channels/flood/ws")
    await canary.barrier()
    assert running.broker.subscribers("flood") == 2

    sent: list[str] = []
    received: list[str] = []
    pinged = 0
    while running.registry.dropped["ws"] == 0:
        assert pinged < 200_000, "the ping flood was never closed"
        flood.transport.write(ping_frames(500))
        pinged += 500
        sent.append(await publish_http(running, "flood", "canary"))
        received += [f["id"] for f in await canary.messages(1)]
        # what the server holds for the flood: its outlet's queue, and what the
        # connection buffers once the outlet has been paused, both bounded
        t = server.transport
        assert server.outlet.queued <= queue
        assert len(t.dataBuffer) + t._tempDataLen <= t.bufferSize + 2 * queue
    for _ in range(5):
        sent.append(await publish_http(running, "flood", "after"))
    received += [f["id"] for f in await canary.messages(5)]
    flood.transport.resumeProducing()  # read again: the server has closed it
    await within(flood.lost)

    assert received == sent  # the canary lost nothing
    assert server.ended
    assert running.registry.dropped["ws"] == 1
    assert running.broker.subscribers("flood") == 1
    assert running.registry.count("ws") == 1


async def publish_http(running: Any, channel: str, data: str) -> str:
    code, body = await post_json(running.url + f"/channels/{channel}", data)
    assert code == 201, body
    return json.loads(body)["id"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(("transport", "path"), [("sse", "events"), ("stream", "stream")])
@pytest_twisted.ensureDeferred
async def test_heartbeats_to_a_client_that_never_reads_count_against_the_queue(
    start_daemon: Any, transport: str, path: str
) -> None:
    """Heartbeats are queued bytes too: with nothing published, a stuck
    reader is still closed once its heartbeats pass ``[limits] queue``."""
    queue = 1024
    running = start_daemon(settings(limits={"queue": queue}))
    raw = await RawHTTP.open(running.port, get_request(f"/channels/h/{path}"))
    await subscribed(running.broker, "h")
    [conn] = running.registry.connections[transport]
    conn.outlet.pauseProducing()  # what the connection does once the client stops reading
    beats = 0
    while not conn.ended:
        assert beats < 10_000, "never closed"
        conn.heartbeat()
        beats += 1
        assert conn.outlet.queued <= queue
    assert beats > queue // 16  # closed by the bound, not at once
    assert running.registry.dropped[transport] == 1
    await raw.until(lambda _: raw.ended)
    assert running.broker.subscribers("h") == 0


def test_the_readme_lists_every_bound() -> None:
    """README "Limits" names every numeric setting that bounds something."""
    from dataclasses import fields
    from pathlib import Path

    from pushd.config import SECTIONS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("\n## Limits\n", 1)[1].split("\n## ", 1)[0]
    not_bounds = {"heartbeat", "retry"}  # intervals, not limits
    checked = 0
    for name, cls in SECTIONS.items():
        for field in fields(cls):
            if field.type in ("int", "float") and field.name not in not_bounds:
                assert f"{field.name}`" in section, f"[{name}] {field.name} is not in Limits"
                checked += 1
    assert checked >= 18


def test_a_message_weighs_exactly_its_json_encoding() -> None:
    from pushd.model import Message, json_payload, text_payload
    from pushd.wire import encode, message_bytes

    for payload in [text_payload("héllo\n\"x\""), json_payload({"a": [1, "é"]}), json_payload(None)]:
        m = Message("ep-12", 12, "a.b:c@d-e", "note", payload, 1_700_000_000_123)
        assert message_bytes(m) == len(encode(m, "json"))
