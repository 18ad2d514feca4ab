"""The Redis broker against a real redis-server: the broker contract, and what
happens when Redis loses data, drops a pub/sub message or goes away.

Each test gets its own redis-server on a free port (the ``redis`` fixture,
started in ~20 ms), so a test may kill, stop or restart it. "Nodes" are RedisBroker instances in this
process sharing that server, as pushd processes on several hosts would.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults

from pushd.broker.redis import RedisBroker
from pushd.errors import LimitError, PushdError
from tests.helpers import Recorder
from tests.redis_server import RedisServer

TIMEOUT = 10.0  # a bound on every wait: a broken broker fails, it does not hang


class Waiting(Recorder):
    """A Recorder whose test can wait for its n-th event."""

    def __init__(self) -> None:
        super().__init__()
        self._waits: list[tuple[int, Deferred[None]]] = []

    def _note(self) -> None:
        for n, d in list(self._waits):
            if len(self.events) >= n:
                self._waits.remove((n, d))
                d.callback(None)

    def deliver(self, message: Any) -> None:
        super().deliver(message)
        self._note()

    def reset(self, channel: str, cursor: str | None) -> None:
        super().reset(channel, cursor)
        self._note()

    def closed(self, channel: str) -> None:
        super().closed(channel)
        self._note()

    def until(self, n: int) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waits.append((n, d))
        self._note()
        return within(d)


def within(d: Deferred[Any], seconds: float = TIMEOUT) -> Deferred[Any]:
    """``d``, failed with a clear error if it has not fired in ``seconds``."""
    timer = reactor.callLater(seconds, lambda: d.called or d.errback(
        AssertionError(f"nothing after {seconds}s")))

    def settled(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        return result

    return d.addBoth(settled)


@pytest.fixture
def nodes(redis: RedisServer) -> Iterator[Any]:
    """Call (async) with RedisBroker keywords: a started broker, connected."""
    made: list[RedisBroker] = []

    async def make(**kw: Any) -> RedisBroker:
        kw.setdefault("size", 5)
        kw.setdefault("ttl", 60)
        kw.setdefault("timeout", 1.0)
        broker = RedisBroker(reactor, url=f"redis://127.0.0.1:{redis.port}/0", **kw)
        broker.startService()
        made.append(broker)
        await connected(broker)
        return broker

    yield make
    for broker in made:
        if broker.running:
            broker.stopService()


async def connected(broker: RedisBroker) -> None:
    await within(gatherResults([broker.commands.when_up(), broker.pubsub.when_up()]))


async def live(broker: RedisBroker, channel: str, since: str | None = None) -> Waiting:
    """A subscriber whose replay (or reset) is over, on a node whose pub/sub
    subscription to the channel is confirmed and caught up."""
    r = Waiting()
    sub = broker.subscribe(channel, r, since)
    await within(sub.when_live())
    feed = broker._feeds[channel]
    while feed.outstanding or feed.busy:  # each confirmation ends in a fill
        await within(broker._next_fill(feed))
    return r


async def publish(broker: RedisBroker, channel: str, data: Any = "x", event: str = "message"):
    return await broker.publish(channel, data, event)


async def raw(redis: RedisServer, *command: Any) -> Any:
    """One command through a connection of its own (not a broker's)."""
    import txredisapi

    conn = await txredisapi.Connection("127.0.0.1", redis.port, reconnect=False, charset=None)
    try:
        return await conn.execute_command(*command)
    finally:
        await conn.disconnect()


def epoch_of(message_id: str) -> str:
    return message_id.rpartition("-")[0]


# -- the contract, as the memory broker keeps it -------------------------------------


@pytest_twisted.ensureDeferred
async def test_ids_are_epoch_dash_seq_per_channel_and_fields_round_trip(nodes: Any) -> None:
    broker = await nodes()
    a = [await publish(broker, "a") for _ in range(3)]
    b = await publish(broker, "b", {"k": [1, "é"]}, "price")
    epoch = epoch_of(a[0].id)
    assert [m.id for m in a] == [f"{epoch}-1", f"{epoch}-2", f"{epoch}-3"]
    assert b.id.endswith("-1")
    page = await broker.read("b", None, 10)
    assert [m.as_dict() for m in page.messages] == [b.as_dict()]
    assert page.messages[0].data == {"k": [1, "é"]} and page.messages[0].event == "price"
    text = await publish(broker, "t", '"quoted" text')
    page = await broker.read("t", None, 10)
    assert page.messages[0].payload.text == '"quoted" text'
    assert page.messages[0].payload.json == text.payload.json


@pytest_twisted.ensureDeferred
async def test_history_trimmed_to_the_count(nodes: Any) -> None:
    broker = await nodes(size=3)
    ids = [(await publish(broker, "a")).id for _ in range(5)]
    page = await broker.read("a", None, 100)
    assert [m.id for m in page.messages] == ids[2:]
    info = await broker.info("a")
    assert (info.history, info.last_id, info.subscribers) == (3, ids[-1], 0)
    # a cursor at or after the last trimmed message is honoured; before it, reset
    assert [m.id for m in (await broker.read("a", ids[1], 10)).messages] == ids[2:]
    page = await broker.read("a", ids[0], 10)
    assert (page.messages, page.cursor, page.reset) == ([], ids[-1], True)


@pytest_twisted.ensureDeferred
async def test_history_trimmed_by_age_on_redis_time(nodes: Any, redis: RedisServer) -> None:
    """Stored times are Redis's; two entries written an hour ago are expired
    by the next read, and a cursor before them gets a reset."""
    broker = await nodes(ttl=60)
    m = await publish(broker, "a")
    epoch = epoch_of(m.id)
    key = "pushd:{a}:s"
    old = int(m.time) - 3_600_000
    await raw(redis, "DEL", key)
    for seq, t in ((1, old), (2, old), (3, m.time)):
        await raw(redis, "XADD", key, f"{seq}-0", "t", t, "m", b"message\ntx")
    await raw(redis, "HSET", "pushd:{a}:h", "s", 3)
    page = await broker.read("a", None, 10)
    assert [x.id for x in page.messages] == [f"{epoch}-3"]
    assert (await broker.read("a", f"{epoch}-1", 10)).reset
    assert [x.id for x in (await broker.read("a", f"{epoch}-2", 10)).messages] == [f"{epoch}-3"]
    assert (await broker.info("a")).history == 1


@pytest_twisted.ensureDeferred
async def test_live_subscriber_gets_messages_in_order(nodes: Any) -> None:
    broker = await nodes(size=100)
    r = await live(broker, "a")
    sent = [(await publish(broker, "a", i)).id for i in range(20)]
    await r.until(20)
    assert r.ids == sent


@pytest_twisted.ensureDeferred
async def test_resume_replays_after_the_cursor_then_live(nodes: Any) -> None:
    broker = await nodes(size=10)
    ids = [(await publish(broker, "a")).id for _ in range(4)]
    r = await live(broker, "a", ids[1])
    assert r.ids == ids[2:]
    ids.append((await publish(broker, "a")).id)
    await r.until(3)
    assert r.ids == ids[2:]
    at_last = await live(broker, "a", ids[-1])
    assert at_last.events == []


@pytest_twisted.ensureDeferred
async def test_nothing_lost_or_doubled_at_the_resume_seam(nodes: Any) -> None:
    """Publishes in flight from two nodes while subscribers resume on each."""
    a = await nodes(size=1000)
    b = await nodes(size=1000)
    first = await publish(a, "s", 0)
    inflight = []
    subs = []
    for i in range(1, 61):
        inflight.append((a if i % 2 else b).publish("s", i))
        if i % 10 == 0:
            r = Waiting()
            (b if i % 20 else a).subscribe("s", r, first.id)
            subs.append(r)
    sent = [m.id for m in await gatherResults(inflight)]
    assert len(set(sent)) == 60
    for r in subs:
        await r.until(60)
        assert r.ids == sorted(sent, key=lambda i: int(i.rpartition("-")[2]))
        assert r.events == [("message", i) for i in r.ids]


@pytest.mark.parametrize("cursor", ["other-1", "garbage", "EP-", "EP-+1", "EP-99", "EP-1", ""])
@pytest_twisted.ensureDeferred
async def test_unusable_cursors_get_a_reset_with_the_current_position(
    nodes: Any, cursor: str
) -> None:
    broker = await nodes(size=2)
    ids = [(await publish(broker, "a")).id for _ in range(4)]
    cursor = cursor.replace("EP", epoch_of(ids[0]))
    r = await live(broker, "a", cursor)
    assert r.events == [("reset", ids[-1])]
    nxt = await publish(broker, "a")
    await r.until(2)
    assert r.events == [("reset", ids[-1]), ("message", nxt.id)]
    page = await broker.read("a", cursor, 10)
    assert (page.messages, page.cursor, page.reset) == ([], nxt.id, True)


@pytest_twisted.ensureDeferred
async def test_reset_on_a_channel_that_never_had_messages_carries_null(nodes: Any) -> None:
    broker = await nodes()
    r = await live(broker, "new", "abc-3")
    assert r.events == [("reset", None)]
    assert await broker.info("nothing") is None
    assert await broker.read("nothing", None, 5) == (await broker.read("nothing", None, 5))


@pytest_twisted.ensureDeferred
async def test_delete_closes_subscribers_on_every_node_and_renews_the_epoch(nodes: Any) -> None:
    a = await nodes()
    b = await nodes()
    old = await publish(a, "a")
    ra = await live(a, "a")
    rb = await live(b, "a")
    assert await b.delete("a") == 1
    await ra.until(1)
    await rb.until(1)
    assert ra.events == rb.events == [("closed", "a")]
    assert await a.info("a") is None
    assert await a.delete("a") is None
    new = await publish(a, "a")
    assert epoch_of(new.id) != epoch_of(old.id)
    assert (await b.read("a", old.id, 10)).reset
    # a subscriber that came after the delete is not closed by its notice
    late = await live(a, "a", new.id)
    newer = await publish(b, "a")
    await late.until(1)
    assert late.events == [("message", newer.id)]


@pytest_twisted.ensureDeferred
async def test_cancel_stops_delivery_and_unsubscribes_after_linger(nodes: Any) -> None:
    broker = await nodes(linger=0.0)
    r = Waiting()
    sub = broker.subscribe("a", r)
    await within(sub.when_live())
    assert (await broker.info("a")).subscribers == 1
    assert broker.channel_count() == 1
    sub.cancel()
    sub.cancel()
    await publish(broker, "a")
    assert r.events == []
    assert broker.subscriber_count() == 0
    d: Deferred[None] = Deferred()
    reactor.callLater(0, d.callback, None)  # the linger (0 s) passes
    await d
    assert broker.channel_count() == 0


@pytest_twisted.ensureDeferred
async def test_bad_names_fail_and_store_nothing(nodes: Any) -> None:
    broker = await nodes()
    for d in (
        broker.publish("bad name", "x"),
        broker.publish("a", "x", "reset"),
        broker.publish_many([("a", 1, "message"), ("b/c", 2, "message")]),
        broker.read("bad name", None, 1),
    ):
        with pytest.raises(PushdError) as e:
            await d
        assert e.value.status == 400
    with pytest.raises(PushdError):
        broker.subscribe("bad name", Recorder())
    assert await broker.info("a") is None


@pytest_twisted.ensureDeferred
async def test_publish_many_is_one_step_across_channels(nodes: Any) -> None:
    broker = await nodes()
    ra = await live(broker, "a")
    ms = await broker.publish_many([("a", 1, "message"), ("b", 2, "x"), ("a", 3, "message")])
    assert [m.id.rpartition("-")[2] for m in ms] == ["1", "1", "2"]
    await ra.until(2)
    assert ra.ids == [ms[0].id, ms[2].id]


# -- several nodes ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_publish_on_one_node_reaches_subscribers_on_the_other(nodes: Any) -> None:
    a = await nodes()
    b = await nodes()
    rb = await live(b, "news")
    m = await publish(a, "news", {"n": 1})
    await rb.until(1)
    assert rb.ids == [m.id]
    assert (await b.info("news")).subscribers == 1


@pytest_twisted.ensureDeferred
async def test_subscribers_are_summed_over_the_live_nodes(nodes: Any, redis: RedisServer) -> None:
    """DESIGN "Many processes": ``subscribers`` sums the live nodes' counts,
    as each last reported them (every couple of seconds; here reported by
    hand), and a node that stopped reporting stops counting."""
    a = await nodes(census_interval=3600)
    b = await nodes(census_interval=3600)
    c = await nodes(census_interval=3600)
    await live(a, "many")
    await live(a, "many")
    await live(b, "many")
    await live(c, "other")
    for node in (a, b, c):
        await within(node.census.report())
    assert [(await n.info("many")).subscribers for n in (a, b, c)] == [3, 3, 3]
    assert (await a.info("other")).subscribers == 1
    # a new subscriber on a counts at once there, on the others at its next report
    await live(a, "many")
    assert [(await n.info("many")).subscribers for n in (a, b)] == [4, 3]
    await within(a.census.report())
    assert (await b.info("many")).subscribers == 4
    # b is gone without a word (SIGKILL): once its liveness key expires it
    # is not counted, though its field is still there
    await raw(redis, "DEL", b.census.alive_key(b.census.node))
    assert (await a.info("many")).subscribers == 3
    # c stops cleanly: it takes its counts back before it closes
    await within(c.stopService())
    assert await a.info("other") is None  # no history, no subscribers anywhere: 404


@pytest_twisted.ensureDeferred
async def test_a_cursor_from_one_node_resumes_on_another(nodes: Any) -> None:
    a = await nodes()
    b = await nodes()
    ra = await live(a, "c")
    ids = [(await publish(a, "c")).id for _ in range(3)]
    await ra.until(3)
    rb = await live(b, "c", ra.ids[0])
    assert rb.ids == ids[1:]


# -- Redis losing data -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_lost_channel_hash_renews_the_epoch_and_resets_old_cursors(
    nodes: Any, redis: RedisServer
) -> None:
    a = await nodes()
    b = await nodes()
    old = [(await publish(a, "a")).id for _ in range(2)]
    r = await live(b, "a", old[0])
    assert r.ids == old[1:]
    await raw(redis, "DEL", "pushd:{a}:h")
    new = await publish(a, "a")
    assert epoch_of(new.id) != epoch_of(old[0]) and new.id.endswith("-1")
    await r.until(3)
    assert r.events[1:] == [("reset", None), ("message", new.id)]
    page = await b.read("a", old[-1], 10)
    assert (page.reset, page.cursor) == (True, new.id)


@pytest_twisted.ensureDeferred
async def test_redis_restarted_without_persistence(nodes: Any, redis: RedisServer) -> None:
    """Publishing fails as unavailable while it is down; subscriptions stay open;
    after it is back, the new epoch is told as a reset, never a reused id."""
    a = await nodes(retry_after=7)
    b = await nodes()
    old = [(await publish(a, "a")).id for _ in range(3)]
    r = await live(b, "a")
    redis.kill()
    with pytest.raises(LimitError) as e:
        await within(a.publish("a", "lost"))
    assert (e.value.status, e.value.code, e.value.retry_after) == (503, "unavailable", 7)
    for d in (a.read("a", None, 5), a.info("a"), a.delete("a")):
        with pytest.raises(LimitError):
            await within(d)
    assert b.subscriber_count() == 1 and not b.available
    redis.start()
    await connected(a)
    await connected(b)
    assert b.available
    new = await publish(a, "a", "after")
    assert epoch_of(new.id) != epoch_of(old[0])
    await r.until(2)
    assert r.events == [("reset", None), ("message", new.id)]
    page = await a.read("a", old[-1], 10)
    assert (page.reset, page.cursor) == (True, new.id)


@pytest_twisted.ensureDeferred
async def test_a_changed_run_id_renews_the_epoch_even_when_the_hash_survived(
    nodes: Any, redis: RedisServer
) -> None:
    """Redis restored from a snapshot may have lost the last messages: the hash
    says a different run_id wrote it, so the channel starts a new epoch."""
    broker = await nodes()
    old = await publish(broker, "a")
    await raw(redis, "HSET", "pushd:{a}:h", "r", "another-run-id")
    page = await broker.read("a", old.id, 10)
    assert page.reset and page.cursor is None
    new = await publish(broker, "a")
    assert epoch_of(new.id) != epoch_of(old.id) and new.id.endswith("-1")


# -- pub/sub losing messages ---------------------------------------------------------------


def drop_pubsub(broker: RedisBroker, count: int) -> list[bytes]:
    """The next ``count`` pub/sub messages to ``broker`` are lost, as when
    Redis cuts a slow subscriber off; returns what was dropped."""
    dropped: list[bytes] = []
    original = broker._push

    def push(reply: list[Any]) -> None:
        if reply[0] == b"message" and len(dropped) < count:
            dropped.append(reply[2])
            return
        original(reply)

    broker.pubsub.on_push = push
    return dropped


@pytest_twisted.ensureDeferred
async def test_a_missed_pubsub_message_is_filled_from_the_stream(nodes: Any) -> None:
    a = await nodes(size=10)
    b = await nodes(size=10)
    r = await live(b, "a")
    dropped = drop_pubsub(b, 2)
    ids = [(await publish(a, "a", i)).id for i in range(4)]
    await r.until(4)
    assert len(dropped) == 2
    assert r.events == [("message", i) for i in ids]


@pytest_twisted.ensureDeferred
async def test_a_gap_the_stream_no_longer_covers_is_a_reset(nodes: Any) -> None:
    a = await nodes(size=2)
    b = await nodes(size=2)
    r = await live(b, "a")
    drop_pubsub(b, 3)
    ids = [(await publish(a, "a", i)).id for i in range(4)]
    await r.until(3)
    # 1 and 2 are gone from history: told as a reset to just before 3
    assert r.events == [("reset", ids[1]), ("message", ids[2]), ("message", ids[3])]


@pytest_twisted.ensureDeferred
async def test_the_periodic_check_catches_a_lost_last_message(nodes: Any) -> None:
    a = await nodes()
    b = await nodes()
    r = await live(b, "a")
    drop_pubsub(b, 1)
    m = await publish(a, "a")
    assert r.events == []
    b.check()
    await r.until(1)
    assert r.ids == [m.id]


@pytest_twisted.ensureDeferred
async def test_a_cut_pubsub_connection_is_resubscribed_and_filled(nodes: Any) -> None:
    """The publishes run right after Redis closed the subscriber connections
    (one connection, in order), so the subscriber node must fill them."""
    a = await nodes(size=100)
    b = await nodes(size=100)
    r = await live(b, "a")
    first = await publish(a, "a", "before")
    await r.until(1)
    kill = a.commands.execute("CLIENT", "KILL", "TYPE", "pubsub")
    sent = [a.publish("a", i) for i in range(5)]
    assert await kill >= 1  # b's (a follows nothing, so its connection is no subscriber)
    ids = [m.id for m in await gatherResults(sent)]
    await r.until(6)
    assert r.events == [("message", i) for i in [first.id, *ids]]
    later = await publish(a, "a", "after")
    await r.until(7)
    assert r.ids[-1] == later.id


@pytest_twisted.ensureDeferred
async def test_a_stopped_redis_times_out_and_subscriptions_survive(
    nodes: Any, redis: RedisServer
) -> None:
    """SIGSTOP: connections stay open but nothing answers. Publishing fails
    after ``timeout``; when Redis runs again everything goes on, no loss."""
    a = await nodes(timeout=0.3, size=100)
    b = await nodes(timeout=0.3, size=100)
    r = await live(b, "a")
    assert redis.process is not None
    os.kill(redis.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(LimitError) as e:
            await within(a.publish("a", "x"))
        assert e.value.code == "unavailable"
    finally:
        os.kill(redis.process.pid, signal.SIGCONT)
    await connected(a)
    ms = [await publish(a, "a", i) for i in range(3)]
    await r.until(3)
    if len(r.ids) == 3 and r.ids[-1] != ms[-1].id:
        await r.until(4)
    # "x" may have been stored (the answer, not the write, was lost): if it
    # was, the subscriber has it too, before the three, never after
    assert r.ids[-3:] == [m.id for m in ms]
    assert len(r.ids) in (3, 4) and r.ids == sorted(r.ids, key=lambda i: int(i.split("-")[1]))
    assert all(k == "message" for k, _ in r.events)


# -- things a node must do for itself ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_script_is_loaded_again_after_script_flush(
    nodes: Any, redis: RedisServer
) -> None:
    broker = await nodes()
    await publish(broker, "a")
    await raw(redis, "SCRIPT", "FLUSH")
    m = await publish(broker, "a")
    assert m.id.endswith("-2")


@pytest_twisted.ensureDeferred
async def test_keys_carry_the_channel_as_hash_tag(nodes: Any, redis: RedisServer) -> None:
    broker = await nodes(prefix="app1:")
    await publish(broker, "news.eu")
    keys = sorted(await raw(redis, "KEYS", "*"))
    assert keys == [b"app1:{news.eu}:h", b"app1:{news.eu}:s"]


# -- a daemon on Redis ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_daemon_on_redis_answers_503_unavailable_while_redis_is_away(
    start_daemon: Any, redis: RedisServer
) -> None:
    """Publishing is 503 ``unavailable`` with Retry-After and /readyz is 503;
    an open SSE stream stays open and goes on (told ``reset``: the Redis that
    came back lost the history) once Redis is back."""
    import treq

    from tests.clients import RawHTTP, get_request

    def edit(settings: Any) -> None:
        settings.broker = f"redis://127.0.0.1:{redis.port}/0"
        settings.broker_timeout = 0.3
        settings.limits.retry_after = 9

    running = start_daemon(edit)
    assert isinstance(running.broker, RedisBroker) and running.broker.timeout == 0.3
    await connected(running.broker)
    await within(running.daemon.ready())
    first = await treq.post(running.url + "/channels/a", data=b"one")
    assert first.code == 201
    first_id = (await first.json())["id"]
    ready = await treq.get(running.url + "/readyz")
    assert (ready.code, await ready.json()) == (200, {"status": "ready"})
    stream = await RawHTTP.open(running.port, get_request(f"/channels/a/events?since={first_id}"))
    await within(stream.contains(b"\r\n\r\n"))
    (streamer,) = running.registry.connections["sse"]
    await within(streamer.subscription.when_live())  # its (empty) replay is over

    redis.kill()
    answer = await treq.post(running.url + "/channels/a", data=b"lost")
    assert answer.code == 503
    assert answer.headers.getRawHeaders("Retry-After") == ["9"]
    assert (await answer.json())["error"] == "unavailable"
    ready = await treq.get(running.url + "/readyz")
    assert (ready.code, await ready.json()) == (503, {"status": "unavailable"})

    redis.start()
    await connected(running.broker)
    ready = await treq.get(running.url + "/readyz")
    assert ready.code == 200
    await ready.content()
    again = await treq.post(running.url + "/channels/a", data=b"two")
    assert again.code == 201
    again_id = (await again.json())["id"]
    await within(stream.contains(b"data: two\n"))
    body = stream.data.split(b"\r\n\r\n", 1)[1]
    assert b"event: reset" in body and body.index(b"event: reset") < body.index(b"data: two")
    assert again_id.encode() in body and b"lost" not in body
    stream.close()


def test_broker_settings() -> None:
    from pushd.config import ConfigError, parse

    settings = parse({"broker": "rediss://:s%40cret@redis.example:6380/2", "broker_timeout": 1})
    assert (settings.broker, settings.broker_timeout) == (
        "rediss://:s%40cret@redis.example:6380/2", 1.0)
    from pushd.broker.resp import RedisURL

    url = RedisURL(settings.broker)
    assert (url.tls, url.host, url.port, url.db, url.password) == (
        True, "redis.example", 6380, 2, "s@cret")
    assert "cret" not in str(url)
    assert parse({}).broker == "memory"
    for bad in ({"broker": "mysql://x"}, {"broker": "redis://h/notanumber"},
                {"broker_timeout": 0}, {"broker": 5}):
        with pytest.raises(ConfigError):
            parse(bad)
