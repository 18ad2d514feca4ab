"""Chaos, with an oracle (issue 19): nothing acknowledged is lost, on any failure.

Three real pushd nodes (``twistd -n pushd``, ``broker = redis://``) share one
real redis-server. Publishers on every node publish to two channels, each
message's data unique; per channel, one subscriber per transport (SSE,
NDJSON stream, WebSocket, long-poll, poll) hops from node to node with its
cursor, every few messages and whenever its connection ends. Meanwhile the
test, one step after another, each step once more messages were
acknowledged: SIGKILLs a node and starts it again; cuts one node's pub/sub
connection (``CLIENT KILL ID`` of a ``CLIENT LIST TYPE pubsub`` entry);
SIGSTOPs Redis for three seconds (past ``broker_timeout``), every
subscriber hopping to another node in the middle of it; restarts Redis
(SIGKILL) with its append-only file, then without its data (a fresh one);
and all that twice. At the end every publisher stops, one more message per
channel (the fence) is published and acknowledged, and every subscriber
must get past it.

The oracle. Per channel the test knows:

- *acknowledged* publishes: id → data, from each ``201``;
- *unsure* publishes: the data of each that failed (``503``, no answer, the
  node died): stored or not, they may be received and are not owed;
- the channel's *epochs in order*: before each Redis restart the test pauses
  Redis's writes (``CLIENT PAUSE WRITE``), reads the channel's epoch from its
  hash, then kills it, and reads it once more at the end. A Redis run gives a
  channel at most one epoch, so this is every epoch, in the order made. An id
  ``<epoch>-<seq>`` is then a position ``(rank of epoch, seq)``.

Per subscriber, over all its connections in the order received (messages,
and ``reset`` notices with their cursor; it starts from the cursor of a
message published before it, the *seed*):

1. every message is one that was published: its id is acknowledged with
   that very data, or its data is an unsure publish's;
2. no id is received twice;
3. positions strictly increase (so ids within an epoch strictly increase);
4. when consecutive messages are of different epochs, a ``reset`` came
   between them; a ``reset`` never names a position behind the last message
   received, nor a position of the last message's epoch (history is
   never trimmed here, so within an epoch nothing can be skipped);
5. every acknowledged message after the seed was received, or is *covered*
   by a ``reset`` the subscriber was told: a reset with cursor ``C`` covers
   every position up to and including ``C`` (every message of an older
   epoch, and those of ``C``'s epoch up to ``C``'s seq); a reset with a null
   cursor (Redis had lost the channel's data) covers every message of the
   epochs older than that of the next message received after it.

Waits are on events (acknowledgements counted, a process's output or exit,
bytes arriving); the timed ones are Redis's three stopped seconds, a client's
pause of 0.1 s before trying again after a failure, and the pace of the
publishers and poll clients, which is load, not a wait for an event.
"""

from __future__ import annotations

import json
import random
import secrets
import shutil
import signal
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

import pytest
import pytest_twisted
import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError, gatherResults
from twisted.internet.error import ConnectError, ConnectionLost
from twisted.internet.task import deferLater

from tests.clients import RawHTTP, get_request
from tests.nodes import HTTP, Node, ndjson_events, sse_events, ws_events
from tests.process import bounded
from tests.redis_server import BINARY, RedisServer, free_port
from tests.test_ops_support import ws_handshake

CHANNELS = ("chaos-a", "chaos-b")
TRANSPORTS = ("events", "stream", "ws", "longpoll", "poll")
PUBLISH_PACE = 0.03  # seconds between one publisher's publishes
POLL_PACE = 0.05
RETRY = 0.1  # a client's pause after a failure before it tries again
STEP = 30  # acknowledgements between two chaos steps
ROUNDS = 2  # of every failure


def position(epochs: list[str], mid: str) -> tuple[int, int] | None:
    """``<epoch>-<seq>`` as (rank of its epoch, seq); None for an epoch not made."""
    epoch, _, seq = mid.rpartition("-")
    if epoch not in epochs:
        return None
    return epochs.index(epoch), int(seq)


def longer_than(size: int) -> Callable[[bytes], bool]:
    return lambda data: len(data) > size


class Oracle:
    """What was published, per channel, and the check of what a subscriber got."""

    def __init__(self) -> None:
        self.acked: dict[str, dict[str, str]] = {c: {} for c in CHANNELS}
        self.unsure: dict[str, set[str]] = {c: set() for c in CHANNELS}
        self.epochs: dict[str, list[str]] = {c: [] for c in CHANNELS}
        self.count = 0
        self._waiting: list[tuple[int, Deferred[None]]] = []
        self.problems: list[str] = []  # seen by clients as they ran

    def ack(self, channel: str, mid: str, data: str) -> None:
        if mid in self.acked[channel]:
            self.problems.append(f"{channel}: id {mid} answered twice")
        self.acked[channel][mid] = data
        self.count += 1
        for pair in list(self._waiting):
            if self.count >= pair[0]:
                self._waiting.remove(pair)
                pair[1].callback(None)

    def acks(self, n: int) -> Deferred[None]:
        """Fires once ``n`` more publishes have been acknowledged."""
        d: Deferred[None] = Deferred()
        self._waiting.append((self.count + n, d))
        return bounded(d, 30)

    def made(self, channel: str, epoch: str | None) -> None:
        epochs = self.epochs[channel]
        if epoch and (not epochs or epochs[-1] != epoch):
            epochs.append(epoch)

    def check(self, sub: Subscriber, seed: str) -> list[str]:
        """The problems in what ``sub`` received (rules 1-5 of the module's docstring)."""
        channel, epochs = sub.channel, self.epochs[sub.channel]
        acked, unsure = self.acked[channel], self.unsure[channel]
        problems = []
        seen: set[str] = set()
        start = position(epochs, seed)
        assert start is not None, (seed, epochs)
        last, reset_since = start, False
        covers: list[tuple[int, int]] = []
        null_pending = False
        for kind, value, data in sub.events:
            at = position(epochs, value) if value is not None else None
            if kind == "message":
                if at is None:
                    problems.append(f"{value}: an epoch Redis never made")
                    continue
                if acked.get(value, data if data in unsure else None) != data:
                    problems.append(f"{value} {data!r}: not what was published as {value}")
                if value in seen:
                    problems.append(f"{value}: received twice")
                seen.add(value)
                if at <= last:
                    problems.append(f"{value}: after {last}, not after it")
                if at[0] != last[0] and not reset_since:
                    problems.append(f"{value}: a new epoch without a reset")
                if null_pending:
                    covers.append((at[0], 0))
                    null_pending = False
                last, reset_since = at, False
            elif kind == "reset":
                reset_since = True
                if value is None:
                    null_pending = True
                    continue
                if at is None:
                    problems.append(f"reset to {value}: an epoch Redis never made")
                    continue
                if at < last or at[0] == last[0]:
                    problems.append(f"reset to {value} at {last}: behind it or in its epoch")
                covers.append(at)
            else:
                problems.append(f"{kind} {value}: not expected")
        for mid in acked:
            at = position(epochs, mid)
            if at is None:
                problems.append(f"acknowledged {mid}: an epoch Redis never made")
            elif at > start and mid not in seen and not any(at <= c for c in covers):
                problems.append(f"acknowledged {mid} ({acked[mid]!r}) lost")
        return problems


class Subscriber:
    """One client of one transport, hopping between nodes with its cursor."""

    def __init__(
        self, channel: str, transport: str, nodes: list[Node], cursor: str, rng: random.Random,
    ) -> None:
        self.channel = channel
        self.transport = transport
        self.nodes = nodes
        self.cursor: str | None = cursor
        self.rng = rng
        self.node = rng.randrange(len(nodes))
        self.events: list[tuple[str, str | None, Any]] = []
        self.stopping = False
        self.hops = 0
        self.failures: list[str] = []
        self.problems: list[str] = []
        self.close: Callable[[], None] = lambda: None
        self._past: list[tuple[tuple[int, int], list[str], Deferred[None]]] = []
        self.done: Deferred[None] | None = None

    def __repr__(self) -> str:
        return f"<{self.transport} on {self.channel}>"

    # -- what it receives ------------------------------------------------------
    def record(self, kind: str, value: str | None, data: Any = None) -> None:
        self.events.append((kind, value, data))
        if value is not None:  # a null reset keeps the cursor: the client has no other
            self.cursor = value
        for pair in list(self._past):
            target, epochs, d = pair
            at = position(epochs, value) if value is not None else None
            if at is not None and at >= target:
                self._past.remove(pair)
                d.callback(None)

    def past(self, mid: str, epochs: list[str]) -> Deferred[None]:
        """Fires once it received ``mid``, or a message or reset past it."""
        target = position(epochs, mid)
        assert target is not None, (mid, epochs)
        d: Deferred[None] = Deferred()
        if any(
            (at := position(epochs, v)) is not None and at >= target
            for _, v, _ in self.events if v is not None
        ):
            d.callback(None)
        else:
            self._past.append((target, epochs, d))
        return d

    # -- running ---------------------------------------------------------------
    def start(self) -> None:
        self.done = Deferred.fromCoroutine(self.run())

    def stop(self) -> None:
        self.stopping = True
        self.close()

    def hop(self) -> None:
        """End the current connection now: it goes on on another node."""
        self.close()

    async def run(self) -> None:
        while not self.stopping:
            node = self.nodes[self.node]
            try:
                await self.session(node)
            except (ConnectError, ConnectionLost, TimeoutError) as e:
                self.failures.append(f"{node.name}: {type(e).__name__}")
                if not self.stopping:
                    await deferLater(reactor, RETRY)
            self.node = (self.node + self.rng.randrange(1, len(self.nodes))) % len(self.nodes)
            self.hops += 1

    async def session(self, node: Node) -> None:
        if self.transport in ("longpoll", "poll"):
            await self.polls(node)
        else:
            await self.stream(node)

    def request(self) -> bytes:
        c, cursor = self.channel, self.cursor
        since = f"?since={quote(cursor)}" if cursor else ""
        if self.transport == "events":
            extra = (f"Last-Event-ID: {cursor}",) if cursor else ()
            return get_request(f"/channels/{c}/events", *extra)
        if self.transport == "stream":
            return get_request(f"/channels/{c}/stream{since}")
        return ws_handshake(f"/channels/{c}/ws{since}")

    async def stream(self, node: Node) -> None:
        """SSE, NDJSON or WebSocket: read until a few messages came, or it ends."""
        parse = {"events": sse_events, "stream": ndjson_events, "ws": ws_events}[self.transport]
        raw = await RawHTTP.open(node.port, self.request())
        self.close = raw.close
        if self.stopping:
            raw.close()
        hop_after = self.rng.randrange(3, 15)
        taken = got = 0
        while True:
            try:
                await raw.until(longer_than(len(raw.data)), timeout=60)
            except AssertionError:
                pass  # it ended
            status = raw.data.split(b"\r\n", 1)[0]
            if status and not status.startswith((b"HTTP/1.1 200", b"HTTP/1.1 101")):
                self.problems.append(f"{node.name}: {status!r}")
            events = parse(raw.data)
            for kind, value, data in events[taken:]:
                self.record(kind, value, data)
                got += kind == "message"
            taken = len(events)
            if raw.ended or self.stopping:
                return
            if got >= hop_after:
                raw.close()
                return

    async def polls(self, node: Node) -> None:
        """Long-polls or polls from the cursor until a few messages came."""
        client = HTTP(node.port)
        self.close = client.close
        hop_after = self.rng.randrange(3, 15)
        got = 0
        try:
            while not self.stopping and got < hop_after:
                since = f"since={quote(self.cursor)}&" if self.cursor else ""
                path = f"/channels/{self.channel}/{self.transport}?{since}"
                path += "timeout=5" if self.transport == "longpoll" else "limit=100"
                code, _, body = await client.request("GET", path, timeout=10)
                if code == 503:
                    self.failures.append(f"{node.name}: 503")
                    await deferLater(reactor, RETRY)
                    return
                if code != 200:
                    self.problems.append(f"{node.name}: {code} {body[:200]!r}")
                    return
                page = json.loads(body)
                if page.get("reset"):
                    self.record("reset", page["cursor"])
                for m in page["messages"]:
                    self.record("message", m["id"], m["data"])
                    got += 1
                if page.get("closed"):
                    self.record("closed", None)
                if self.transport == "poll" or page.get("reset"):
                    await deferLater(reactor, POLL_PACE)
        finally:
            client.close()


class Publisher:
    """Publishes to the channels in turn through one node, hopping when it fails."""

    def __init__(self, name: str, nodes: list[Node], node: int, oracle: Oracle) -> None:
        self.name = name
        self.nodes = nodes
        self.node = node
        self.oracle = oracle
        self.stopping = False
        self.n = 0
        self.failed = 0
        self.done: Deferred[None] | None = None

    def start(self) -> None:
        self.done = Deferred.fromCoroutine(self.run())

    async def run(self) -> None:
        client = HTTP(self.nodes[self.node].port)
        while not self.stopping:
            channel = CHANNELS[self.n % len(CHANNELS)]
            data = f"{self.name}/{self.n}"
            self.n += 1
            try:
                code, _, body = await client.request(
                    "POST", f"/channels/{channel}", data.encode(), timeout=5
                )
            except (ConnectError, ConnectionLost, TimeoutError):
                code, body = 0, b""
            if code == 201:
                self.oracle.ack(channel, json.loads(body)["id"], data)
                await deferLater(reactor, PUBLISH_PACE)
                continue
            self.oracle.unsure[channel].add(data)
            self.failed += 1
            if code not in (0, 503):
                self.oracle.problems.append(f"publish {data}: {code} {body[:200]!r}")
            client.close()
            self.node = (self.node + 1) % len(self.nodes)
            client = HTTP(self.nodes[self.node].port)
            await deferLater(reactor, RETRY)
        client.close()


async def publish_acked(node: Node, channel: str, data: str) -> str:
    """Publish through ``node``, which must acknowledge it; the id."""
    client = HTTP(node.port)
    try:
        code, _, body = await client.request("POST", f"/channels/{channel}", data.encode())
    finally:
        client.close()
    assert code == 201, body
    return json.loads(body)["id"]  # type: ignore[no-any-return]


async def redis_call(redis: RedisServer, *command: Any) -> Any:
    conn = await redis_conn(redis)
    try:
        return await conn.execute_command(*command)
    finally:
        await conn.disconnect()


def redis_conn(redis: RedisServer) -> Deferred[Any]:
    """A connection of the test's own; replies as strings (an epoch such as
    ``09642011`` is not a number)."""
    return txredisapi.Connection(  # type: ignore[no-any-return]
        "127.0.0.1", redis.port, reconnect=False, convertNumbers=False
    )


async def record_epochs(redis: RedisServer, oracle: Oracle, pause: bool) -> None:
    """Each channel's current epoch, from its hash; with ``pause``, after
    holding every write (the node's scripts) until Redis is killed next."""
    conn = await redis_conn(redis)
    try:
        if pause:
            await conn.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
        for channel in CHANNELS:
            epoch = await conn.execute_command("HGET", f"pushd:{{{channel}}}:h", "e")
            oracle.made(channel, epoch)
    finally:
        await conn.disconnect()


async def chaos_round(
    redis: RedisServer, nodes: list[Node], subs: list[Subscriber], oracle: Oracle,
    rng: random.Random, step: Callable[[str], None],
) -> None:
    """Each failure once, one after another, ``STEP`` acknowledgements apart."""
    await oracle.acks(STEP)
    node = rng.choice(nodes)
    step(f"SIGKILL {node.name}")
    await node.kill()
    await oracle.acks(STEP)
    step(f"start {node.name} again")
    await node.start()
    await oracle.acks(STEP)
    pubsub = await redis_call(redis, "CLIENT", "LIST", "TYPE", "pubsub")
    ids = [line.split()[0].removeprefix("id=") for line in pubsub.splitlines() if line]
    assert ids, pubsub  # a node's link is in pub/sub mode while it follows a channel
    victim = rng.choice(ids)
    step(f"CLIENT KILL ID {victim} (a node's pub/sub connection)")
    await redis_call(redis, "CLIENT", "KILL", "ID", victim)
    await oracle.acks(STEP)
    step("SIGSTOP redis for 3 s; every subscriber hops in the middle")
    redis.process.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    await deferLater(reactor, 1.5)
    for sub in subs:
        sub.hop()
    await deferLater(reactor, 1.5)
    redis.process.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    step("SIGCONT redis")
    await oracle.acks(STEP)
    step("restart redis with its append-only file")
    await record_epochs(redis, oracle, pause=True)
    redis.kill()
    redis.start(persist=True)
    await oracle.acks(STEP)
    step("restart redis without its data (a fresh append-only file)")
    await record_epochs(redis, oracle, pause=True)
    redis.kill()
    shutil.rmtree(redis.workdir / "appendonlydir")
    redis.start(persist=True)
    await oracle.acks(STEP)


@pytest.fixture
def chaos_redis(tmp_path: Path) -> Any:
    """A redis-server of the test's own, with its append-only file (fsync always)."""
    if BINARY is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    (tmp_path / "redis").mkdir()
    server = RedisServer(BINARY, free_port(), tmp_path / "redis")
    server.start(persist=True)
    yield server
    if server.process is not None and server.process.poll() is None:
        server.process.send_signal(signal.SIGCONT)  # in case the test left it stopped
    server.kill()


@pytest_twisted.ensureDeferred
async def test_chaos_loses_nothing_acknowledged(tmp_path: Path, chaos_redis: RedisServer) -> None:
    seed_value = secrets.randbits(32)
    rng = random.Random(seed_value)
    redis = chaos_redis
    nodes = [Node(tmp_path, redis, f"node{i}") for i in range(3)]
    oracle = Oracle()
    subs: list[Subscriber] = []
    publishers: list[Publisher] = []
    log: list[str] = []
    try:
        await bounded(gatherResults([Deferred.fromCoroutine(n.start()) for n in nodes]))
        seeds = {c: await publish_acked(nodes[0], c, f"seed/{c}") for c in CHANNELS}
        await record_epochs(redis, oracle, pause=False)
        for channel in CHANNELS:
            oracle.acked[channel][seeds[channel]] = f"seed/{channel}"
            for transport in TRANSPORTS:
                subs.append(Subscriber(channel, transport, nodes, seeds[channel], rng))
        for sub in subs:
            sub.start()
        publishers = [Publisher(f"p{i}", nodes, i, oracle) for i in range(3)]
        for publisher in publishers:
            publisher.start()
        started = reactor.seconds()

        def step(what: str) -> None:
            log.append(f"{reactor.seconds() - started:6.2f}s {oracle.count:4d} acks: {what}")

        for _ in range(ROUNDS):
            await chaos_round(redis, nodes, subs, oracle, rng, step)
        step("publishers stop")
        for publisher in publishers:
            publisher.stopping = True
        await bounded(gatherResults([p.done for p in publishers]))  # type: ignore[misc]
        fences = {c: await publish_acked(nodes[0], c, f"fence/{c}") for c in CHANNELS}
        await record_epochs(redis, oracle, pause=False)
        for channel, mid in fences.items():
            oracle.acked[channel][mid] = f"fence/{channel}"
        waits = [sub.past(fences[sub.channel], oracle.epochs[sub.channel]) for sub in subs]
        await bounded(gatherResults(waits), 20)
        step("every subscriber is past the fence")
    finally:
        for publisher in publishers:
            publisher.stopping = True
        for sub in subs:
            sub.stop()
        for node in nodes:
            node.stop()
        for node in nodes:
            if node.child is not None:
                await bounded(node.child.exited)
    await bounded(gatherResults([s.done for s in subs if s.done is not None]))
    problems = list(oracle.problems)
    for sub in subs:
        problems += [f"{sub}: {p}" for p in sub.problems + oracle.check(sub, seeds[sub.channel])]
    summary = [
        f"seed {seed_value}; epochs {oracle.epochs}",
        *(line for node in nodes for line in node.warnings()),
        f"acknowledged {oracle.count}, unsure {sum(len(u) for u in oracle.unsure.values())}",
        *log,
        *(f"{s}: {sum(k == 'message' for k, _, _ in s.events)} messages, "
          f"{sum(k == 'reset' for k, _, _ in s.events)} resets, {s.hops} hops, "
          f"{len(s.failures)} failures" for s in subs),
    ]
    print("\n".join(summary))
    assert not problems, "\n".join(problems[:40] + summary)
