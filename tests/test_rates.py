"""Rate limits (DESIGN "Who may publish and read", issue 20 point 6).

``[limits] publish_rate``: publishes a second per token ``sub``, else per
client address; ``[limits] connect_rate``: new connections a second per client
address (behind a trusted proxy: each request, for the client it names). Over the rate: ``429 {"error":"rate_limited"}`` with ``Retry-After``,
over WebSocket an error frame (the connection stays open). Other clients
are not slowed.

The bucket arithmetic runs on a ``task.Clock``; the 429s over real sockets
on 127.0.0.1, with the daemon's buckets moved onto a ``task.Clock`` so that
refilling is a clock advance, not a wait.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import Clock

from pushd.config import ConfigError, Settings, parse
from pushd.rates import Buckets
from tests.clients import RawHTTP, _RawProtocol, get_request, split_response
from tests.test_auth import Keys, bearer, call, stored, ws_open
from tests.test_ops_support import bounded, ws_handshake

OTHER = {"X-Forwarded-For": "127.0.0.2"}  # another loopback client, as the trusted proxy says


# -- the buckets, on a clock ----------------------------------------------------------
def test_a_bucket_holds_a_burst_of_the_rate_and_refills_with_the_clock() -> None:
    clock = Clock()
    clock.advance(1000)
    buckets = Buckets(2, clock)
    assert [buckets.take("a") for _ in range(3)] == [0, 0, 1]  # a burst of 2, then wait
    assert buckets.take("b") == 0  # another key has its own bucket
    clock.advance(0.4)
    assert buckets.take("a") == 1  # not a whole token back yet
    clock.advance(0.1)
    assert buckets.take("a") == 0  # one token every 1/rate seconds
    assert buckets.take("a") == 1
    clock.advance(60)  # idle for long: full again, never more than the burst
    assert [buckets.take("a") for _ in range(3)] == [0, 0, 1]


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    clock = Clock()
    slow = Buckets(0.25, clock)  # one every 4 s, a burst of 1
    assert slow.take("a") == 0
    assert slow.take("a") == 4
    clock.advance(1.5)
    assert slow.take("a") == 3  # 2.5 s left, rounded up
    fast = Buckets(1000, clock)
    assert [fast.take("a") for _ in range(1000)] == [0] * 1000
    assert fast.take("a") == 1  # a millisecond left: still 1


def test_a_cost_above_the_burst_is_taken_from_a_full_bucket_and_leaves_a_debt() -> None:
    clock = Clock()
    buckets = Buckets(3, clock)
    assert buckets.take("a", 2) == 0
    assert buckets.take("a", 2) == 1  # one token left: refused, nothing taken
    assert buckets.take("a", 1) == 0
    clock.advance(1)  # full again
    assert buckets.take("a", 9) == 0  # more than the burst: taken, 2 s of debt
    clock.advance(1.9)
    assert buckets.take("a") == 1
    clock.advance(0.1 + 1 / 3)
    assert buckets.take("a") == 0


def test_full_buckets_are_dropped_and_the_table_stays_bounded() -> None:
    clock = Clock()
    buckets = Buckets(1, clock, max_keys=100)
    for i in range(100):
        buckets.take(f"old{i}")
    clock.advance(1)  # every one of them is full again: the same as no bucket
    buckets.take("new")
    assert list(buckets.full_at) == ["new"]
    for i in range(1000):  # all busy at once: never more than max_keys
        buckets.take(f"busy{i}")
        assert len(buckets.full_at) <= 100
    assert buckets.take("busy999") == 1  # the newest keys are still limited


def test_rates_are_settings_and_not_negative() -> None:
    settings = parse({"limits": {"publish_rate": 2.5, "connect_rate": 10}})
    assert (settings.limits.publish_rate, settings.limits.connect_rate) == (2.5, 10.0)
    assert (Settings().limits.publish_rate, Settings().limits.connect_rate) == (0, 0)
    with pytest.raises(ConfigError, match="publish_rate must not be negative"):
        parse({"limits": {"publish_rate": -1}})


# -- publish_rate over real sockets -------------------------------------------------------
def publish_rate(rate: float) -> Any:
    def edit(s: Settings) -> None:
        s.limits.publish_rate = rate
        s.trusted_proxies = ["127.0.0.1"]
        s.websocket.publish = True

    return edit


def on_clock(running: Any) -> Clock:
    """Move the daemon's publish buckets onto a clock the test advances."""
    clock = Clock()
    clock.advance(1000)
    rates = running.daemon.context.publish_rates
    rates.by_sub.clock = rates.by_address.clock = clock
    return clock


def assert_rate_limited(status: int, body: Any, headers: Any, retry_after: str) -> None:
    assert (status, body["error"]) == (429, "rate_limited"), body
    assert "publish_rate" in body["message"]
    assert headers.getRawHeaders("retry-after") == [retry_after]


async def publish_one(running: Any, data: bytes, headers: dict[str, str] | None = None) -> Any:
    return await call("POST", running.url + "/channels/news", data=data,
                      headers=headers or {}, persistent=False)


@pytest_twisted.ensureDeferred
async def test_http_publishes_over_the_rate_get_429_and_another_address_is_not_slowed(
    start_daemon: Any,
) -> None:
    running = start_daemon(publish_rate(2))
    clock = on_clock(running)
    assert (await publish_one(running, b"1"))[0] == 201
    assert (await publish_one(running, b"2"))[0] == 201
    assert_rate_limited(*await publish_one(running, b"3"), "1")
    # another client (its address from the trusted proxy's header) at the same time
    assert (await publish_one(running, b"other", OTHER))[0] == 201
    assert await stored(running) == ["1", "2", "other"]
    clock.advance(0.5)  # one publish back
    assert (await publish_one(running, b"4"))[0] == 201
    assert_rate_limited(*await publish_one(running, b"5"), "1")
    assert await stored(running) == ["1", "2", "other", "4"]


@pytest_twisted.ensureDeferred
async def test_a_batch_costs_one_per_message_and_is_refused_whole(start_daemon: Any) -> None:
    running = start_daemon(publish_rate(3))
    clock = on_clock(running)

    async def batch(*data: int) -> Any:
        items = [{"channel": "news", "data": d} for d in data]
        return await call("POST", running.url + "/publish", data=json.dumps(items).encode(),
                          persistent=False)

    assert (await batch(1, 2))[0] == 201
    assert_rate_limited(*await batch(3, 4), "1")  # one left of three: nothing stored
    assert await stored(running) == [1, 2]
    assert (await batch(5))[0] == 201
    clock.advance(1)
    assert (await batch(*range(10, 20)))[0] == 201  # above the burst, from a full bucket
    status, body, headers = await batch(30)
    assert_rate_limited(status, body, headers, "3")  # ... and paid for: 10 / 3 s
    assert await stored(running) == [1, 2, 5, *range(10, 20)]


@pytest_twisted.ensureDeferred
async def test_a_websocket_publish_over_the_rate_gets_an_error_frame_and_stays_open(
    start_daemon: Any,
) -> None:
    running = start_daemon(publish_rate(1))
    clock = on_clock(running)
    client = await ws_open(running, "/ws")
    try:
        client.send({"type": "subscribe", "channel": "news"})
        client.send({"type": "publish", "channel": "news", "data": "one"})
        client.send({"type": "publish", "channel": "news", "data": "two"})
        frames = await client.barrier()
        errors = [f for f in frames if f["type"] == "error"]
        assert [f["code"] for f in errors] == ["rate_limited"]
        assert "publish_rate" in errors[0]["message"]
        assert [f["data"] for f in frames if f["type"] == "message"] == ["one"]
        # still open: it keeps receiving, and publishes again once the rate allows
        await running.broker.publish("news", "from elsewhere", "message")
        assert (await client.next())["data"] == "from elsewhere"
        clock.advance(1)
        client.send({"type": "publish", "channel": "news", "data": "three"})
        assert (await client.next())["data"] == "three"
        assert await stored(running) == ["one", "from elsewhere", "three"]
    finally:
        client.transport.abortConnection()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: Any) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


@pytest_twisted.ensureDeferred
async def test_each_token_subject_has_its_own_bucket_wherever_it_publishes_from(
    start_daemon: Any, keys: Keys
) -> None:
    def edit(s: Settings) -> None:
        keys.edit(s)
        s.limits.publish_rate = 1

    running = start_daemon(edit)
    on_clock(running)

    def token(sub: str) -> dict[str, str]:
        claims = keys.claims(publish=["news"])
        claims["sub"] = sub
        return {**bearer(keys.rs256(claims)), "X-Forwarded-For": "203.0.113.9"}

    alice, bob = token("alice"), token("bob")
    assert (await publish_one(running, b"1", alice))[0] == 201
    assert_rate_limited(*await publish_one(running, b"2", alice), "1")
    # the same address, another subject: not slowed
    assert (await publish_one(running, b"3", bob))[0] == 201
    # alice from another address: still her bucket
    assert_rate_limited(
        *await publish_one(running, b"4", {**alice, "X-Forwarded-For": "198.51.100.7"}), "1"
    )
    # without a token the loopback client has its address's bucket
    assert (await publish_one(running, b"5"))[0] == 201
    assert await stored(running) == ["1", "3", "5"]


# -- connect_rate over real sockets -------------------------------------------------------
async def exchange(
    port: int, path: str, source: str = "127.0.0.1", headers: tuple[str, ...] = ()
) -> tuple[bytes, dict[str, str], bytes]:
    """One request on a new connection from ``source``; the answer once closed."""
    client = RawHTTP()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5, bindAddress=(source, 0))
    client.protocol = await connectProtocol(endpoint, _RawProtocol(client))
    client.protocol.transport.write(get_request(path, *headers, "Connection: close"))
    await bounded(client.until(lambda _: client.ended))
    return split_response(client.data)


@pytest_twisted.ensureDeferred
async def test_connections_over_the_rate_get_429_and_another_address_is_not_slowed(
    start_daemon: Any,
) -> None:
    def edit(s: Settings) -> None:
        s.limits.connect_rate = 2

    running = start_daemon(edit)
    clock = Clock()
    clock.advance(1000)
    running.daemon.site.connect_rates.clock = clock
    port = running.port
    for _ in range(2):
        status, _, _ = await exchange(port, "/channels/c/poll")
        assert status == b"HTTP/1.1 200 OK"
    status, headers, body = await exchange(port, "/channels/c/poll")
    assert status == b"HTTP/1.1 429 Too Many Requests"
    assert headers["retry-after"] == "1"
    assert headers["connection"] == "close"
    assert json.loads(body)["error"] == "rate_limited"
    assert "connect_rate" in json.loads(body)["message"]
    # a WebSocket handshake over the rate is refused the same way, not upgraded
    raw = await RawHTTP.open(port, ws_handshake("/ws"))
    await bounded(raw.until(lambda _: raw.ended))
    status, headers, _ = split_response(raw.data)
    assert (status, headers["retry-after"]) == (b"HTTP/1.1 429 Too Many Requests", "1")
    # the operational URLs are answered all the same
    status, _, _ = await exchange(port, "/healthz")
    assert status == b"HTTP/1.1 200 OK"
    # another address at the same time is not slowed
    status, _, _ = await exchange(port, "/channels/c/poll", source="127.0.0.2")
    assert status == b"HTTP/1.1 200 OK"
    clock.advance(0.5)  # one connection back
    status, _, _ = await exchange(port, "/channels/c/poll")
    assert status == b"HTTP/1.1 200 OK"
    status, _, _ = await exchange(port, "/channels/c/poll")
    assert status == b"HTTP/1.1 429 Too Many Requests"


@pytest_twisted.ensureDeferred
async def test_behind_a_trusted_proxy_connect_rate_counts_each_request_of_the_named_client(
    start_daemon: Any,
) -> None:
    """Behind nginx every connection comes from 127.0.0.1, and one kept-alive
    connection carries many clients' requests: the rate is then taken per
    request, for the client its X-Forwarded-For names."""

    def edit(s: Settings) -> None:
        s.limits.connect_rate = 2
        s.trusted_proxies = ["127.0.0.1"]

    running = start_daemon(edit)
    clock = Clock()
    clock.advance(1000)
    running.daemon.site.connect_rates.clock = clock
    proxy = await RawHTTP.open(running.port, b"")
    answers = []
    for client in ("10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2"):
        proxy.data = b""
        proxy.protocol.transport.write(
            get_request("/channels/c/poll", f"X-Forwarded-For: {client}")
        )
        await bounded(proxy.contains(b"\r\n\r\n"))
        answers.append(proxy.data.split(b"\r\n", 1)[0])
    assert answers == [b"HTTP/1.1 200 OK"] * 4  # four requests, two clients: within 2 each
    # a third for 10.0.0.1 is over its rate, on this kept-alive connection too
    proxy.data = b""
    proxy.protocol.transport.write(get_request("/channels/c/poll", "X-Forwarded-For: 10.0.0.1"))
    await bounded(proxy.until(lambda _: proxy.ended))
    status, headers, body = split_response(proxy.data)
    assert (status, headers["retry-after"]) == (b"HTTP/1.1 429 Too Many Requests", "1")
    assert json.loads(body)["error"] == "rate_limited"
    # the proxy's other clients are not slowed, nor is the proxy's own address
    for who in ("X-Forwarded-For: 10.0.0.3", "X-Forwarded-For: 10.0.0.3", "Accept: */*"):
        status, _, _ = await exchange(running.port, "/channels/c/poll", headers=(who,))
        assert status == b"HTTP/1.1 200 OK"
    clock.advance(0.5)  # one token back for 10.0.0.1
    status, _, _ = await exchange(
        running.port, "/channels/c/poll", headers=("X-Forwarded-For: 10.0.0.1",)
    )
    assert status == b"HTTP/1.1 200 OK"
