"""The redis source against a real redis-server (see tests/redis_server.py).

A Redis PUBLISH must come out as a message on the pushd channel; after
Redis is killed and started again on the same port, the source reconnects,
subscribes again, and messages flow again.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString
from twisted.internet.task import Clock

from pushd.broker.memory import MemoryBroker
from pushd.config import ConfigError
from pushd.sources import build
from pushd.sources.base import Backoff
from pushd.sources.redis import RedisSource
from tests.process import bounded
from tests.redis_server import RedisServer, redis_server  # noqa: F401 - the fixture
from tests.test_sources_base import Collector


def make(server: RedisServer, **kw: Any) -> tuple[RedisSource, MemoryBroker]:
    broker = MemoryBroker(reactor)
    source = RedisSource(
        broker, reactor, clientFromString(reactor, server.endpoint),
        backoff=Backoff(reactor, 0.05, 0.2, 10), **kw,
    )
    return source, broker


@pytest_twisted.ensureDeferred
async def test_publish_reaches_the_channel_and_survives_a_redis_restart(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    source, broker = make(redis_server, channels=["news"])
    got = Collector(broker, "news")
    connected = source.when_connected()
    source.startService()
    try:
        await bounded(connected)
        assert await redis_server.publish("news", "hello") == 1
        await got.wait(1)

        ended = source.when_ended()
        redis_server.kill()
        await bounded(ended)
        connected = source.when_connected()
        redis_server.start()  # same port; the source is retrying with backoff
        await bounded(connected)
        assert await redis_server.publish("news", "again") == 1
        await got.wait(2)
        assert got.data == ["hello", "again"]
        assert source.restarts >= 1
    finally:
        await bounded(source.stopService())
    assert await redis_server.publish("news", "after stop") == 0


@pytest_twisted.ensureDeferred
async def test_patterns_template_map_and_bad_names(redis_server: RedisServer) -> None:  # noqa: F811
    source, broker = make(
        redis_server, patterns=["orders.*"], channels=["legacy"],
        template="shop.{channel}", channel_map={"legacy": "news"}, as_json=True,
    )
    orders = Collector(broker, "shop.orders.new")
    news = Collector(broker, "news")
    connected = source.when_connected()
    source.startService()
    try:
        await bounded(connected)
        await redis_server.publish("orders.bad name", '{"skipped": true}')  # invalid name
        await redis_server.publish("orders.new", "not json")  # invalid body
        await redis_server.publish("orders.new", '{"id": 7}')
        await redis_server.publish("legacy", '"007"')
        await orders.wait(1)
        await news.wait(1)
        assert orders.data == [{"id": 7}]
        assert news.data == ["007"]
        assert source.errors == 2
    finally:
        await bounded(source.stopService())


@pytest_twisted.ensureDeferred
async def test_stop_while_redis_is_unreachable() -> None:
    broker = MemoryBroker(reactor)
    clock = Clock()
    source = RedisSource(
        broker, reactor, clientFromString(reactor, "tcp:host=127.0.0.1:port=1"),
        channels=["x"], clock=clock, backoff=Backoff(clock, 1, 8, 10),
    )
    ended = source.when_ended()
    source.startService()
    await bounded(ended)  # refused: a retry is scheduled on the clock
    assert source.errors == 1 and [c.getTime() for c in clock.getDelayedCalls()] == [1.0]
    await bounded(source.stopService())
    assert clock.getDelayedCalls() == []


def test_config_errors_name_the_key() -> None:
    broker = MemoryBroker(Clock())

    def build_redis(**table: Any) -> Any:
        return build({"type": "redis", **table}, broker, reactor)

    with pytest.raises(ConfigError, match="channels or patterns"):
        build_redis()
    with pytest.raises(ConfigError, match="channels must be a list of strings"):
        build_redis(channels=[1])
    with pytest.raises(ConfigError, match="endpoint 'nope:x' is not usable"):
        build_redis(endpoint="nope:x", channels=["a"])
    with pytest.raises(ConfigError, match=r"use \{channel\} for the Redis channel name"):
        build_redis(channels=["a"], channel="{name}")
    with pytest.raises(ConfigError, match="does not make valid channel names"):
        build_redis(channels=["a"], channel="a b {channel}")
    with pytest.raises(ConfigError, match=r"channel_map\.a = 'b c' is not a valid"):
        build_redis(channels=["a"], channel_map={"a": "b c"})
    source = build_redis(patterns=["*"], channel="app.{channel}")
    assert isinstance(source, RedisSource) and source.template == "app.{channel}"
