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
from twisted.internet.defer import Deferred

from tests.clients import RawHTTP, get_request
from tests.nodes import HTTP, Node, fired, message_ids, ndjson_events, showing, sse_events
from tests.process import bounded
from tests.redis_server import RedisServer, redis  # noqa: F401  (fixture)


@pytest.fixture
def nodes(tmp_path: Path, redis: RedisServer) -> Any:  # noqa: F811
    """Three started nodes on the test's own redis-server."""
    made = [Node(tmp_path, redis, f"node{i}") for i in range(3)]
    for node in made:
        pytest_twisted.blockon(bounded(Deferred.fromCoroutine(node.start())))
    yield made
    for node in made:
        node.stop()
    for node in made:
        if node.child is not None:
            pytest_twisted.blockon(bounded(node.child.exited))


ROUNDS = 30
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
