"""Retry-safe publishing (DESIGN "Publishing"): an ``Idempotency-Key`` on
``POST /channels/{ch}``, or ``"idempotency_key"`` on an item of ``POST
/publish``, used again on that channel within the history TTL stores nothing
and answers the first publish's id.

Over a real port on every broker (memory, one that answers later, Redis);
then the memory broker's keys on a clock (expiry, bounds); then the Redis
broker's, on a redis-server of the test's own: two nodes racing with one key,
expiry, and records that must not count (another epoch, too old).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from pushd.broker.interface import Receipt
from pushd.broker.memory import MemoryBroker
from pushd.broker.redis import RedisBroker
from pushd.broker.resp import Link, RedisURL
from pushd.errors import PushdError
from tests.clients import Collector
from tests.helpers import Recorder
from tests.redis_server import RedisServer
from tests.test_broker_redis import connected, live, raw, within

JSON = {"Content-Type": "application/json"}


async def call(method: str, url: str, **kw: Any) -> tuple[int, Any, Any]:
    response = await treq.request(method, url, **kw)
    text = await response.text("utf-8")
    return response.code, (json.loads(text) if text else None), response.headers


async def post(running: Any, channel: str, data: bytes, key: str | None = None) -> Any:
    headers = {} if key is None else {"Idempotency-Key": key}
    return await call("POST", f"{running.url}/channels/{channel}", data=data, headers=headers)


async def batch(running: Any, items: list[dict[str, Any]]) -> tuple[int, Any, Any]:
    return await call(
        "POST", running.url + "/publish", data=json.dumps(items).encode(), headers=JSON
    )


async def history(running: Any, channel: str) -> list[Any]:
    """The data of every message the channel keeps, oldest first."""
    code, page, _ = await call("GET", f"{running.url}/channels/{channel}/poll")
    assert code == 200
    return [m["data"] for m in page["messages"]]


def stream_ids(data: bytes) -> list[str]:
    """The message ids an NDJSON stream carried (its bytes, still chunked)."""
    ids = []
    for line in data.split(b"\n"):
        start = line.find(b"{")
        if start >= 0:
            obj = json.loads(line[start:])
            if obj.get("type") == "message":
                ids.append(obj["id"])
    return ids


# -- over a real port, every broker ------------------------------------------------


@pytest.mark.both_brokers
@pytest_twisted.ensureDeferred
async def test_the_same_key_twice_stores_one_message_and_answers_the_first(
    running: Any,
) -> None:
    # A subscriber from a known position, so it sees everything published after.
    _, start, _ = await post(running, "orders", b"start")
    stream = await Collector.get(f"{running.url}/channels/orders/stream?since={start['id']}")

    code, first, headers = await post(running, "orders", b"pay 5", key="order-17")
    assert code == 201
    assert headers.getRawHeaders("idempotent-replayed") is None
    code, again, headers = await post(running, "orders", b"pay 5", key="order-17")
    assert code == 201
    assert again == first  # same id, channel and subscribers: as the first publish answered
    assert headers.getRawHeaders("idempotent-replayed") == ["true"]
    # A retry whose body differs is still the same publish: nothing is stored.
    code, third, headers = await post(running, "orders", b"pay 6", key="order-17")
    assert (code, third["id"]) == (201, first["id"])
    assert headers.getRawHeaders("idempotent-replayed") == ["true"]

    _, end, _ = await post(running, "orders", b"end")
    await stream.contains(end["id"].encode())
    assert stream_ids(stream.data) == [first["id"], end["id"]]  # the subscriber saw one
    assert await history(running, "orders") == ["start", "pay 5", "end"]


@pytest.mark.both_brokers
@pytest_twisted.ensureDeferred
async def test_keys_are_per_channel_and_no_key_stores_every_time(running: Any) -> None:
    _, a, _ = await post(running, "a", b"1", key="k")
    code, b, headers = await post(running, "b", b"1", key="k")
    assert code == 201 and headers.getRawHeaders("idempotent-replayed") is None
    assert b["channel"] == "b"
    assert await history(running, "a") == ["1"] and await history(running, "b") == ["1"]
    # Without a key, two identical publishes are two messages, as ever.
    _, one, _ = await post(running, "c", b"same")
    _, two, _ = await post(running, "c", b"same")
    assert one["id"] != two["id"]
    assert await history(running, "c") == ["same", "same"]


@pytest.mark.both_brokers
@pytest_twisted.ensureDeferred
async def test_delete_forgets_the_keys_of_the_channel(running: Any) -> None:
    _, first, _ = await post(running, "gone", b"1", key="k")
    assert (await call("DELETE", f"{running.url}/channels/gone"))[0] == 200
    code, again, headers = await post(running, "gone", b"2", key="k")
    assert code == 201 and headers.getRawHeaders("idempotent-replayed") is None
    assert await history(running, "gone") == ["2"]


@pytest.mark.both_brokers
@pytest_twisted.ensureDeferred
async def test_a_batch_answers_repeats_with_their_first_ids_and_stores_the_rest(
    running: Any,
) -> None:
    items = [
        {"channel": "a", "data": 1, "idempotency_key": "k1"},
        {"channel": "b", "data": 2},
        {"channel": "a", "data": 3, "idempotency_key": "k1"},  # twice in one batch: one
        {"channel": "b", "data": 4, "idempotency_key": "k1"},  # another channel's k1
    ]
    code, body, _ = await batch(running, items)
    assert code == 201
    # ids are per channel: a message is its (channel, id)
    ids = [(m["channel"], m["id"]) for m in body["messages"]]
    assert [c for c, _ in ids] == ["a", "b", "a", "b"]
    assert ids[2] == ids[0] and len(set(ids)) == 3
    assert await history(running, "a") == [1]
    assert await history(running, "b") == [2, 4]

    # The same batch again (a retry): the keyed items answer their first ids.
    code, body, _ = await batch(running, items)
    assert code == 201
    again = [(m["channel"], m["id"]) for m in body["messages"]]
    assert (again[0], again[2], again[3]) == (ids[0], ids[0], ids[3])
    assert again[1] != ids[1]  # no key: stored again
    assert await history(running, "a") == [1]
    assert await history(running, "b") == [2, 4, 2]

    # A single publish with a key a batch used is a repeat too.
    code, one, headers = await post(running, "a", b"x", key="k1")
    assert (code, one["id"]) == (201, ids[0][1])
    assert headers.getRawHeaders("idempotent-replayed") == ["true"]


@pytest.mark.both_brokers
@pytest_twisted.ensureDeferred
async def test_a_batch_with_a_bad_key_stores_nothing_and_records_no_key(running: Any) -> None:
    items = [
        {"channel": "a", "data": 1, "idempotency_key": "good"},
        {"channel": "b", "data": 2, "idempotency_key": ""},
    ]
    code, body, _ = await batch(running, items)
    assert (code, body["error"]) == (400, "bad_idempotency_key")
    assert "item 1" in body["message"]
    assert (await call("GET", f"{running.url}/channels/a"))[0] == 404
    # "good" was not recorded: publishing with it now stores.
    code, _, headers = await post(running, "a", b"1", key="good")
    assert code == 201 and headers.getRawHeaders("idempotent-replayed") is None
    assert await history(running, "a") == ["1"]


BAD_HEADERS = [
    b"",
    b"k" * 129,
    b"caf\xe9",  # not ASCII
    b"tab\there",  # not printable
]


@pytest.mark.both_brokers
@pytest.mark.parametrize("key", BAD_HEADERS)
@pytest_twisted.ensureDeferred
async def test_a_bad_key_header_is_refused_and_stores_nothing(running: Any, key: bytes) -> None:
    code, body, headers = await call(
        "POST", running.url + "/channels/ok", data=b"x", headers={b"Idempotency-Key": [key]}
    )
    assert (code, body["error"]) == (400, "bad_idempotency_key")
    assert headers.getRawHeaders("content-type") == ["application/json"]
    assert (await call("GET", running.url + "/channels/ok"))[0] == 404


BAD_ITEM_KEYS = ["", "k" * 129, "caf\u00e9", "new\nline", 17, ["k"]]


@pytest.mark.both_brokers
@pytest.mark.parametrize("key", BAD_ITEM_KEYS)
@pytest_twisted.ensureDeferred
async def test_a_bad_item_key_is_refused_and_stores_nothing(running: Any, key: Any) -> None:
    code, body, _ = await batch(running, [{"channel": "ok", "data": 1, "idempotency_key": key}])
    assert (code, body["error"]) == (400, "bad_idempotency_key")
    assert (await call("GET", running.url + "/channels/ok"))[0] == 404


@pytest.mark.both_brokers
@pytest_twisted.ensureDeferred
async def test_the_longest_key_and_every_printable_character_are_keys(running: Any) -> None:
    for key in ["k" * 128, "".join(map(chr, range(0x21, 0x7F))), "a b"]:
        _, first, _ = await post(running, "ok", b"x", key=key)
        code, again, headers = await post(running, "ok", b"x", key=key)
        assert (code, again["id"]) == (201, first["id"])
        assert headers.getRawHeaders("idempotent-replayed") == ["true"]
    assert len(await history(running, "ok")) == 3


# -- the memory broker's keys, on a clock ----------------------------------------


def keyed(broker: Any, channel: str, key: str | None, data: Any = "x") -> Receipt:
    receipts = broker.publish_keyed([(channel, data, "message", key)]).result
    return receipts[0]  # type: ignore[no-any-return]


def test_a_key_is_kept_for_the_history_ttl_then_a_retry_stores_again() -> None:
    clock = Clock()
    broker = MemoryBroker(clock, ttl=10)
    first = keyed(broker, "a", "k")
    assert not first.replayed
    clock.advance(10)  # as old as the TTL: the message is kept, and so is its key
    assert keyed(broker, "a", "k") == Receipt(first.id, "a", True)
    clock.advance(0.01)  # older: both are gone
    later = keyed(broker, "a", "k")
    assert not later.replayed and later.id != first.id
    assert [m.id for m in broker.read("a", None, 10).result.messages] == [later.id]


def test_a_key_outlives_its_message_trimmed_by_count() -> None:
    broker = MemoryBroker(Clock(), size=1)
    first = keyed(broker, "a", "k")
    broker.publish("a", "next")  # trims the first message
    assert keyed(broker, "a", "k") == Receipt(first.id, "a", True)
    assert len(broker.read("a", None, 10).result.messages) == 1


def test_keys_are_bounded_in_count_oldest_forgotten_first() -> None:
    broker = MemoryBroker(Clock(), max_keys=2)
    one, two, three = (keyed(broker, "a", k) for k in ("1", "2", "3"))
    assert keyed(broker, "a", "3").replayed and keyed(broker, "a", "2").replayed
    assert not keyed(broker, "a", "1").replayed  # forgotten: stored again
    assert broker._keys.count == 2


def test_every_byte_of_the_keys_is_bounded_through_deletes_and_expiry() -> None:
    clock = Clock()
    broker = MemoryBroker(clock, ttl=5, max_keys=10)
    for i in range(1000):
        keyed(broker, f"c{i % 7}", f"k{i}")
        if i % 3 == 0:
            broker.delete(f"c{i % 7}")
        clock.advance(0.01)
        assert broker._keys.count <= 10
        assert len(broker._keys.order) <= 2 * 10 + 64
    clock.advance(5)
    broker.sweep()
    assert broker._keys.count == 0 and not broker._keys.by_channel and not broker._keys.order


def test_keyed_publishing_checks_everything_first_and_refuses_bad_keys() -> None:
    broker = MemoryBroker(Clock())
    failure = broker.publish_keyed([("a", 1, "message", "k"), ("b", 2, "message", "x" * 129)])
    error = failure.result.value
    failure.addErrback(lambda f: None)
    assert isinstance(error, PushdError) and error.code == "bad_idempotency_key"
    assert broker.channel_count() == 0
    assert not keyed(broker, "a", "k").replayed  # "k" was not recorded


def test_a_keyed_publish_reaches_subscribers_once() -> None:
    broker = MemoryBroker(Clock())
    r = Recorder()
    broker.subscribe("a", r)
    first = keyed(broker, "a", "k")
    keyed(broker, "a", "k")
    assert r.events == [("message", first.id)]


# -- the Redis broker's keys: several nodes on one redis-server ---------------------


@pytest.fixture
def node(redis: RedisServer) -> Iterator[Any]:
    """Call (async) with RedisBroker keywords: a started "node", connected
    to the test's own redis-server."""
    made: list[RedisBroker] = []

    async def make(**kw: Any) -> RedisBroker:
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


@pytest_twisted.ensureDeferred
async def test_the_same_key_on_two_nodes_at_once_stores_one_message(node: Any) -> None:
    a, b, watcher = await node(), await node(), await node()
    seen = await live(watcher, "pay")
    item = [("pay", "5", "message", "order-17")]
    # Both publishes are on the wire before either answers.
    da, db = a.publish_keyed(item), b.publish_keyed(item)
    ra, rb = await within(da), await within(db)
    assert ra[0].id == rb[0].id
    assert sorted([ra[0].replayed, rb[0].replayed]) == [False, True]
    end = await a.publish("pay", "end")
    await seen.until(2)
    assert seen.events == [("message", ra[0].id), ("message", end.id)]
    page = await b.read("pay", None, 10)
    assert [m.data for m in page.messages] == ["5", "end"]


@pytest_twisted.ensureDeferred
async def test_many_racing_publishes_of_one_key_store_one(node: Any) -> None:
    brokers = [await node(size=100) for _ in range(3)]
    pending = [
        broker.publish_keyed([("c", i, "message", "k"), ("c", i, "message", f"own-{i}")])
        for i in range(5)
        for broker in brokers
    ]
    receipts = [await within(d) for d in pending]
    assert len({r[0].id for r in receipts}) == 1
    assert sum(not r[0].replayed for r in receipts) == 1
    page = await brokers[0].read("c", None, 100)
    assert len(page.messages) == 1 + 5  # "k" once, each "own-i" once


async def expired(redis: RedisServer, key: str) -> Deferred[None]:
    """A Deferred that fires when Redis expires ``key`` (a keyspace notice)."""
    await raw(redis, "CONFIG", "SET", "notify-keyspace-events", "Ex")
    ready: Deferred[None] = Deferred()
    gone: Deferred[None] = Deferred()

    def push(reply: list[Any]) -> None:
        if reply[0] == b"subscribe" and not ready.called:
            ready.callback(None)
        elif reply[0] == b"message" and reply[2] == key.encode() and not gone.called:
            gone.callback(None)
            link.stop()

    link = Link(
        reactor, RedisURL(f"redis://127.0.0.1:{redis.port}/0"), pubsub=True, on_push=push
    )
    link.start()
    await within(link.when_up())
    link.send(("SUBSCRIBE", "__keyevent@0__:expired"))
    await within(ready)
    return within(gone)


@pytest_twisted.ensureDeferred
async def test_a_key_expires_with_the_history_ttl_on_redis(
    node: Any, redis: RedisServer
) -> None:
    broker = await node(ttl=0.2)
    keys, _ = broker._idempotency_keys("a")
    gone = await expired(redis, keys)
    first = (await broker.publish_keyed([("a", "1", "message", "k")]))[0]
    assert (await broker.publish_keyed([("a", "1", "message", "k")]))[0].replayed
    await gone  # Redis dropped the channel's keys, 200 ms after they were recorded
    again = (await broker.publish_keyed([("a", "2", "message", "k")]))[0]
    assert not again.replayed and again.id != first.id


@pytest_twisted.ensureDeferred
async def test_a_record_too_old_or_of_another_epoch_is_no_answer(
    node: Any, redis: RedisServer
) -> None:
    broker = await node(ttl=60)
    first = (await broker.publish_keyed([("a", "1", "message", "k")]))[0]
    epoch = first.id.rpartition("-")[0]
    keys, _ = broker._idempotency_keys("a")
    # What a record written more than the TTL ago looks like (its zset entry
    # is gone, as the script would have dropped it) ...
    await raw(redis, "HSET", keys, "old", f"{epoch}\n1\n1000")
    old = (await broker.publish_keyed([("a", "2", "message", "old")]))[0]
    assert not old.replayed
    # ... and one from an epoch the channel no longer has (data lost, or taken over).
    await raw(redis, "HSET", keys, "foreign", "zz\n1\n99999999999999")
    foreign = (await broker.publish_keyed([("a", "3", "message", "foreign")]))[0]
    assert not foreign.replayed
    page = await broker.read("a", None, 10)
    assert [m.data for m in page.messages] == ["1", "2", "3"]
    assert (await broker.publish_keyed([("a", "4", "message", "old")]))[0] == Receipt(
        old.id, "a", True
    )


@pytest_twisted.ensureDeferred
async def test_no_key_publishing_on_redis_writes_no_key_records(
    node: Any, redis: RedisServer
) -> None:
    broker = await node()
    await broker.publish("a", "1")
    await broker.publish_many([("a", "2", "message"), ("b", "3", "message")])
    records = {k for c in "ab" for k in broker._idempotency_keys(c)}
    assert {k.decode() for k in await raw(redis, "KEYS", "*")} & records == set()
    assert {k.decode() for k in await raw(redis, "KEYS", "*")} >= {
        k for c in "ab" for k in broker._key(c)
    }


@pytest_twisted.ensureDeferred
async def test_expired_keys_leave_a_busy_channel_oldest_first(
    node: Any, redis: RedisServer
) -> None:
    """A channel whose keys are refreshed by every publish never expires as a
    whole: each keyed publish drops expired keys (a bounded number at a time)."""
    broker = await node(ttl=60)
    await broker.publish_keyed([("a", "0", "message", "new-0")])
    keys, zset = broker._idempotency_keys("a")
    # 200 keys as they would be had they been recorded at time 1000 ms (long expired)
    for i in range(200):
        await raw(redis, "HSET", keys, f"old-{i}", f"whatever\n{i}\n1000")
        await raw(redis, "ZADD", zset, 1000, f"old-{i}")
    await broker.publish_keyed([("a", "1", "message", "new-1")])
    assert await raw(redis, "HLEN", keys) == 2 + 200 - 128
    await broker.publish_keyed([("a", "2", "message", "new-2")])
    assert sorted(await raw(redis, "HKEYS", keys)) == [b"new-0", b"new-1", b"new-2"]
    assert await raw(redis, "ZCARD", zset) == 3
