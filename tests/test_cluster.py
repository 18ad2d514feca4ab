"""Several real pushd nodes on one real redis-server (DESIGN "Many processes").

Each node is its own ``twistd -n pushd`` process with ``broker = redis://``
(tests/nodes.py); clients talk raw HTTP and WebSocket to them. A message
published on one node reaches every other node's subscribers, on every
transport, with the same ids in the same order; and a subscriber that
connects without a cursor gets everything published after its subscription
was answered, even on a node that did not follow the channel before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from tests.clients import RawHTTP, get_request
from tests.nodes import (
    HTTP,
    Node,
    fired,
    message_ids,
    ndjson_events,
    showing,
    sse_events,
    ws_events,
)
from tests.process import bounded
from tests.redis_server import RedisServer, redis  # noqa: F401  (fixture)
from tests.test_ops_support import ws_client_frame, ws_frames, ws_open


@pytest.fixture
def nodes(tmp_path: Path, redis: RedisServer) -> Any:  # noqa: F811
    """Three started nodes on the test's own redis-server."""
    made = [Node(tmp_path, redis, f"node{i}") for i in range(3)]
    starts = [Deferred.fromCoroutine(node.start()) for node in made]
    pytest_twisted.blockon(bounded(gatherResults(starts, consumeErrors=True)))
    yield made
    for node in made:
        node.stop()
    for node in made:
        if node.child is not None:
            pytest_twisted.blockon(bounded(node.child.exited))


ROUNDS = 30
WS_ROUNDS = 200  # it loses less often than the streams did
EVENTS = {"events": sse_events, "stream": ndjson_events}


@pytest.mark.parametrize("path", ["events", "stream"])
@pytest_twisted.ensureDeferred
async def test_a_cursorless_stream_gets_what_another_node_publishes_after_its_200(
    nodes: list[Node], path: str
) -> None:
    """DESIGN "The transports": a stream (SSE, NDJSON) without a cursor is
    live from the moment it is answered. On a node that did not follow the channel yet, its position
    comes from Redis later than the 200 went out; a message published on
    another node in that instant must still arrive. Each round uses a fresh
    channel (a node follows none of them), publishes on another node the
    moment the SSE head arrives, then publishes a second message: when the
    second arrives, the first must have arrived before it."""
    reader, writer = nodes[0], nodes[1]
    publisher = await HTTP(writer.port).open()
    lost = []
    for i in range(ROUNDS):
        channel = f"race{i}"
        client = await RawHTTP.open(reader.port, get_request(f"/channels/{channel}/{path}"))
        await bounded(client.contains(b"\r\n\r\n"))
        code, _, body = await publisher.request("POST", f"/channels/{channel}", b"first")
        assert code == 201, body
        first = json.loads(body)["id"]
        code, _, body = await publisher.request("POST", f"/channels/{channel}", b"second")
        assert code == 201, body
        second = json.loads(body)["id"]
        parse = EVENTS[path]
        assert await fired(bounded(client.until(showing(parse, second))))
        ids = message_ids(parse(client.data))
        if ids != [first, second]:
            lost.append((channel, ids, [first, second]))
        client.close()
    publisher.close()
    assert not lost, f"{len(lost)} of {ROUNDS} rounds lost a message: {lost[:5]}"


async def longpoll_chain(node: Node, channel: str, since: str, want: int) -> list[Any]:
    """Long-polls from ``since`` on ``node``, each from the last answer's
    cursor, until ``want`` messages came; the messages."""
    client = await HTTP(node.port).open()
    got: list[Any] = []
    cursor = since
    while len(got) < want:
        code, _, body = await client.request(
            "GET", f"/channels/{channel}/longpoll?since={cursor}&timeout=10", timeout=15
        )
        assert code == 200, body
        page = json.loads(body)
        assert not page.get("reset"), page
        got += [(m["id"], m["data"]) for m in page["messages"]]
        cursor = page["cursor"]
    client.close()
    return got


@pytest_twisted.ensureDeferred
async def test_what_one_node_publishes_reaches_the_others_on_every_transport(
    nodes: list[Node],
) -> None:
    """DESIGN "Many processes": every node shares the channels and ids. Ten
    messages published on one node arrive on the two others over SSE, the
    NDJSON stream, WebSocket (each subscribed without a cursor, once
    answered: the head, or the pong after the subscribe), long-poll and poll
    (from the cursor of a message published first), with the ids the
    publisher was answered, in the same order, each once."""
    publisher = await HTTP(nodes[0].port).open()
    code, _, body = await publisher.request("POST", "/channels/x", b"seed")
    assert code == 201, body
    seed = json.loads(body)["id"]
    streams: list[tuple[str, RawHTTP]] = []
    chains = []
    for node in nodes[1:]:
        for path in ("events", "stream"):
            client = await RawHTTP.open(node.port, get_request(f"/channels/x/{path}"))
            await bounded(client.contains(b"\r\n\r\n"))
            streams.append((path, client))
        ws = await ws_open(node.port, "/channels/x/ws")
        ws.protocol.transport.write(ws_client_frame(0x1, b'{"type":"ping"}'))
        await bounded(ws.until(lambda d: any(b'"pong"' in p for _, p in ws_frames(d))))
        streams.append(("ws", ws))
        chains.append(Deferred.fromCoroutine(longpoll_chain(node, "x", seed, 10)))
    sent = []
    for i in range(10):
        code, _, body = await publisher.request("POST", "/channels/x", b"m%d" % i)
        assert code == 201, body
        sent.append((json.loads(body)["id"], f"m{i}"))
    ids = [mid for mid, _ in sent]
    parsers = {"events": sse_events, "stream": ndjson_events, "ws": ws_events}
    for path, client in streams:
        parse = parsers[path]
        await bounded(client.until(showing(parse, ids[-1])))
        got = [(e[1], e[2]) for e in parse(client.data)]
        assert got == sent, (path, got)
        client.close()
    for chain in chains:
        assert await bounded(chain) == sent
    for node in nodes:
        reader = await HTTP(node.port).open()
        code, _, body = await reader.request("GET", f"/channels/x/poll?since={seed}")
        assert code == 200, body
        page = json.loads(body)
        assert [(m["id"], m["data"]) for m in page["messages"]] == sent
        assert page["cursor"] == ids[-1]
        reader.close()
    publisher.close()


@pytest_twisted.ensureDeferred
async def test_a_cursorless_websocket_gets_what_another_node_publishes_after_its_101(
    nodes: list[Node],
) -> None:
    """As for the streams above: ``/channels/{ch}/ws`` is subscribed on open,
    so its 101 is its answer; a message another node publishes the moment
    the 101 arrives must arrive (lost in about 1 of 30 rounds while the 101 went
    out before the subscription was made)."""
    reader, writer = nodes[0], nodes[1]
    publisher = await HTTP(writer.port).open()
    lost = []
    for i in range(WS_ROUNDS):
        channel = f"wsrace{i}"
        client = await ws_open(reader.port, f"/channels/{channel}/ws")
        code, _, body = await publisher.request("POST", f"/channels/{channel}", b"first")
        assert code == 201, body
        first = json.loads(body)["id"]
        code, _, body = await publisher.request("POST", f"/channels/{channel}", b"second")
        assert code == 201, body
        second = json.loads(body)["id"]
        assert await fired(bounded(client.until(showing(ws_events, second))))
        ids = message_ids(ws_events(client.data))
        if ids != [first, second]:
            lost.append((channel, ids, [first, second]))
        client.close()
    publisher.close()
    assert not lost, f"{len(lost)} of {WS_ROUNDS} rounds lost a message: {lost[:5]}"
