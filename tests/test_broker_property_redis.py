"""Property: for the same publishes, trims and cursors, the Redis broker makes
the decisions the memory broker makes: which messages a resume replays (and
then delivers live), which cursors get a ``reset`` (and at what position),
and what a poll answers.

Ids differ between the two (the memory broker's seq is one counter for all
channels, Redis's one per channel), so each message is compared by its
place among its channel's publishes, and notices by kind and that place.
History is trimmed by count (``SIZE``) and by age: an ``age`` step makes
every message so far older than the TTL (the memory broker's clock moves on;
on Redis, whose clock is its own, the channels are read once with a TTL of
one millisecond after Redis's clock has passed the newest message).

One redis-server serves every example; each example has a broker (a "node")
of its own under a key prefix of its own, and deletes its keys at the end.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.task import Clock

from pushd.broker.interface import Page
from pushd.broker.memory import MemoryBroker
from pushd.broker.redis import RedisBroker
from pushd.model import Message
from tests.redis_server import RedisServer
from tests.test_broker_redis import connected, raw, within

CHANNELS = ["a", "b"]
SIZE = 2
TTL = 1000.0
EPOCH = "ep"  # both brokers' (Redis: every channel's): a cursor "ep-999" is ahead on both

cursors = st.one_of(
    st.none(),  # live only (a poll: the newest messages)
    # the message k places back from the channel's newest (k = SIZE is the
    # one just before the oldest kept: the edge of history); none so far: live
    st.integers(0, SIZE + 2),
    st.sampled_from(["foreign", "malformed", "ahead"]),
)
ops = st.lists(
    st.one_of(
        # Publishing is listed thrice so that histories get long enough to trim.
        st.tuples(st.just("publish"), st.sampled_from(CHANNELS)),
        st.tuples(st.just("publish"), st.sampled_from(CHANNELS)),
        st.tuples(st.just("publish"), st.sampled_from(CHANNELS)),
        st.tuples(st.just("age")),
        st.tuples(st.just("subscribe"), st.sampled_from(CHANNELS), cursors),
        st.tuples(st.just("read"), st.sampled_from(CHANNELS), cursors, st.integers(1, 4)),
        st.tuples(st.just("cancel"), st.integers(0, 20)),
    ),
    max_size=30,
)


class Told:
    """A subscriber that writes down what it is told."""

    def __init__(self, side: Side, channel: str) -> None:
        self.side = side
        self.channel = channel
        self.events: list[tuple[str, str | None]] = []

    def deliver(self, message: Message) -> None:
        self.events.append(("message", message.id))

    def reset(self, channel: str, cursor: str | None) -> None:
        self.events.append(("reset", cursor))

    def closed(self, channel: str) -> None:
        self.events.append(("closed", None))

    def told(self) -> list[tuple[str, int | str | None]]:
        """The events, each message and cursor by its place on the channel."""
        return [(kind, self.side.place(self.channel, i)) for kind, i in self.events]


class Side:
    """One broker under test, and the ids its channels were given, in order."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.ids: dict[str, list[str]] = {c: [] for c in CHANNELS}
        self.subs: list[tuple[Told, Any]] = []

    def place(self, channel: str, cursor: str | None) -> int | str | None:
        """The 1-based place of an id among its channel's publishes."""
        if cursor is None:
            return None
        ids = self.ids[channel]
        return ids.index(cursor) + 1 if cursor in ids else f"? {cursor}"

    def cursor(self, channel: str, pick: int | str | None) -> str | None:
        if pick is None:
            return None
        if isinstance(pick, int):
            ids = self.ids[channel]
            return ids[-1 - pick] if pick < len(ids) else None
        return {"foreign": "zz-1", "malformed": "x", "ahead": f"{EPOCH}-999"}[pick]

    def page(self, channel: str, page: Page) -> tuple[Any, ...]:
        return (
            [self.place(channel, m.id) for m in page.messages],
            self.place(channel, page.cursor),
            page.reset,
        )


async def settled(broker: RedisBroker) -> None:
    """Every message Redis holds for a followed channel has reached this node's
    subscribers (its pub/sub copy may still be on the way: read instead)."""
    for feed in list(broker._feeds.values()):
        await within(broker._fill(feed))


async def redis_time(broker: RedisBroker) -> int:
    seconds, micros = await broker.commands.execute("TIME")
    return int(seconds) * 1000 + int(micros) // 1000


async def age(broker: RedisBroker, newest: int) -> None:
    """Make every message so far older than the TTL, on Redis's own clock."""
    for _ in range(100_000):  # a few milliseconds of Redis's clock, asked
        if await redis_time(broker) >= newest + 2:
            break
    else:
        raise AssertionError("Redis's clock did not move")
    broker.ttl = 0.001
    try:
        for channel in CHANNELS:
            await broker.read(channel, None, 0)  # the script trims by age first
    finally:
        broker.ttl = TTL


async def run(script: list[tuple[Any, ...]], server: RedisServer, prefix: str) -> None:
    clock = Clock()
    memory = Side(MemoryBroker(clock, size=SIZE, ttl=TTL, epoch=EPOCH))
    node = RedisBroker(
        reactor, size=SIZE, ttl=TTL, url=f"redis://127.0.0.1:{server.port}/0",
        prefix=prefix, linger=0.0, epoch=EPOCH, timeout=5.0,
    )
    node.startService()
    redis = Side(node)
    newest = 0
    try:
        await connected(node)
        # A live subscriber on every channel, so the memory broker never frees
        # one. There the two differ, knowingly: a memory channel with neither
        # history nor subscribers is forgotten (at the sweep), so a cursor at
        # its last message gets a reset once another channel has published,
        # and a poll's cursor is null; Redis keeps a channel's epoch and last
        # seq for ``keep`` seconds past its history and honours that cursor.
        for side in (memory, redis):
            for channel in CHANNELS:
                told = Told(side, channel)
                sub = side.broker.subscribe(channel, told, None)
                side.subs.append((told, sub))
                await within(sub.when_live())
        await settled(node)

        for op in script:
            if op[0] == "publish":
                memory.ids[op[1]].append(memory.broker.publish(op[1], "x").result.id)
                message = await within(node.publish(op[1], "x"))
                redis.ids[op[1]].append(message.id)
                newest = max(newest, message.time)
            elif op[0] == "age":
                clock.advance(TTL + 1)
                await age(node, newest)
            elif op[0] == "subscribe":
                channel, pick = op[1], op[2]
                for side in (memory, redis):
                    told = Told(side, channel)
                    sub = side.broker.subscribe(channel, told, side.cursor(channel, pick))
                    side.subs.append((told, sub))
                    await within(sub.when_live())
            elif op[0] == "read":
                channel, pick, limit = op[1:]
                pages = [
                    side.page(channel, await within(
                        side.broker.read(channel, side.cursor(channel, pick), limit)
                    ))
                    for side in (memory, redis)
                ]
                assert pages[1] == pages[0], f"poll {op}: redis {pages[1]} memory {pages[0]}"
            else:  # cancel one (not the watchers: see above)
                for side in (memory, redis):
                    picked = side.subs[len(CHANNELS):]
                    if picked:
                        picked[op[1] % len(picked)][1].cancel()
            await settled(node)

        for (mine, _), (theirs, _) in zip(memory.subs, redis.subs, strict=True):
            assert (theirs.channel, theirs.told()) == (mine.channel, mine.told())
    finally:
        node.stopService()
        keys = [k for c in CHANNELS for k in (*node._key(c), *node._idempotency_keys(c))]
        await raw(server, "DEL", *keys)


_examples = itertools.count()


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(script=ops)
@pytest_twisted.ensureDeferred
async def test_redis_decides_as_the_memory_broker_does(
    redis_server: RedisServer, script: list[tuple]
) -> None:
    await run(script, redis_server, f"prop{next(_examples)}:")
