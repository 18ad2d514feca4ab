"""Connection and channel limits: one past a limit gets 503 with Retry-After and a
JSON error (a WebSocket handshake is refused the same way); the clients within
the limit keep receiving, and the daemon stays healthy.
"""

from __future__ import annotations

import json
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred

from pushd.config import Settings
from tests.clients import RawHTTP, dechunk, get_request, split_response, subscribed
from tests.test_ops_support import bounded, get, post, sample, scrape, ws_handshake


def limits(**values: int) -> Any:
    def edit(s: Settings) -> None:
        for key, value in values.items():
            setattr(s.limits, key, value)

    return edit


async def refused(port: int, request: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """Send ``request`` on a new connection; the answer, once the server closed it."""
    client = await RawHTTP.open(port, request)
    await bounded(client.until(lambda _: client.ended))
    return split_response(client.data)


@pytest_twisted.ensureDeferred
async def test_one_past_the_per_address_limit_gets_503_and_the_others_keep_receiving(
    start_daemon: Any,
) -> None:
    running = start_daemon(limits(max_connections_per_address=2, retry_after=7))
    first = await RawHTTP.open(running.port, get_request("/channels/l/events"))
    second = await RawHTTP.open(running.port, get_request("/channels/l/stream"))
    await subscribed(running.broker, "l", 2)

    status, headers, body = await refused(running.port, get_request("/channels/l/events"))
    assert status == b"HTTP/1.1 503 Service Unavailable"
    assert headers["retry-after"] == "7"
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == "too_many_connections"
    # A WebSocket handshake past the limit is refused, not upgraded.
    status, headers, _ = await refused(running.port, ws_handshake("/channels/l/ws"))
    assert status == b"HTTP/1.1 503 Service Unavailable" and headers["retry-after"] == "7"
    # Still healthy at the limit: the operational URLs are always answered.
    code, _, _ = await get(f"{running.url}/healthz")
    assert code == 200
    code, _, _ = await get(f"{running.url}/readyz")
    assert code == 200
    samples = await scrape(f"{running.url}/metrics")
    assert sample(samples, "pushd_http_connections_refused_total") == 2
    assert sample(samples, "pushd_http_responses_total", code="503") == 2

    # Publishing from the same address is refused too (it is a new connection) ...
    status, _, _ = await refused(
        running.port,
        b"POST /channels/l HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n\r\n\"hi\"",
    )
    assert status == b"HTTP/1.1 503 Service Unavailable"
    # ... so publish in-process: the two within the limit receive it.
    await running.broker.publish("l", "still here")
    await bounded(first.contains(b'data: still here'))
    await bounded(second.contains(b'"data":"still here"'))

    # One leaves; a new connection is served again.
    gone = running.daemon.site.connections.empty()
    second.close()
    first.close()
    await bounded(gone)
    code, _, _ = await get(f"{running.url}/channels/l/poll")
    assert code == 200


@pytest_twisted.ensureDeferred
async def test_total_connection_limit(start_daemon: Any) -> None:
    running = start_daemon(limits(max_connections=1))
    held = await RawHTTP.open(running.port, get_request("/channels/t/events"))
    await subscribed(running.broker, "t")
    status, headers, _ = await refused(running.port, get_request("/channels/t/poll"))
    assert status == b"HTTP/1.1 503 Service Unavailable" and headers["retry-after"] == "5"
    await running.broker.publish("t", 1)
    await bounded(held.contains(b"data: 1"))
    held.close()


@pytest_twisted.ensureDeferred
async def test_channel_limit_refuses_publishing_to_a_new_channel(start_daemon: Any) -> None:
    running = start_daemon(limits(max_channels=2))
    for channel in ("a", "b"):
        code, _ = await post(f"{running.url}/channels/{channel}", b"1")
        assert code == 201
    response_code, body = await post(f"{running.url}/channels/c", b"1")
    assert response_code == 503 and json.loads(body)["error"] == "too_many_channels"
    code, headers, _ = await get(f"{running.url}/channels/c/poll")  # reading creates nothing
    assert code == 200
    code, _ = await post(f"{running.url}/channels/a", b"2")  # existing channels still work
    assert code == 201
    # Batch: all or nothing.
    batch = json.dumps([{"channel": "a", "data": 3}, {"channel": "d", "data": 4}]).encode()
    code, body = await post(f"{running.url}/publish", batch,
                            headers={"Content-Type": "application/json"})
    assert code == 503
    code, _, body = await get(f"{running.url}/channels/a/poll")
    assert [m["data"] for m in json.loads(body)["messages"]] == ["1", "2"]  # text bodies


@pytest_twisted.ensureDeferred
async def test_refused_publish_has_retry_after(start_daemon: Any) -> None:
    running = start_daemon(limits(max_channels=1, retry_after=9))
    await running.broker.publish("only", 1)
    client = await RawHTTP.open(
        running.port, b"POST /channels/other HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\n\r\n1"
    )
    await bounded(client.until(lambda d: b"\r\n\r\n" in d and d.rstrip().endswith((b"}", b"0"))))
    status, headers, body = split_response(client.data)
    assert status == b"HTTP/1.1 503 Service Unavailable" and headers["retry-after"] == "9"
    text = body if "content-length" in headers else b"".join(dechunk(body)[0])
    assert json.loads(text)["error"] == "too_many_channels"
    client.close()


def behind_proxy(**values: int) -> Any:
    """Limits, with 127.0.0.1 a trusted proxy (as the shipped nginx site sets it)."""

    def edit(s: Settings) -> None:
        limits(**values)(s)
        s.trusted_proxies = ["127.0.0.1"]

    return edit


def as_client(address: str) -> str:
    return f"X-Forwarded-For: {address}"


@pytest_twisted.ensureDeferred
async def test_behind_a_trusted_proxy_the_per_address_limit_counts_the_named_client(
    start_daemon: Any,
) -> None:
    """Every connection comes from the proxy (127.0.0.1): the limit counts
    the client its X-Forwarded-For names, for as long as that client's
    request is being answered; a kept-alive connection between requests
    counts for nobody (nginx carries many clients' requests on each)."""
    running = start_daemon(behind_proxy(max_connections_per_address=2, retry_after=7))
    port = running.port
    # A kept-alive connection that answered a poll for 10.0.0.1 and stays open:
    kept = await RawHTTP.open(port, get_request("/channels/p/poll", as_client("10.0.0.1")))
    await bounded(kept.contains(b"\r\n\r\n"))
    assert kept.data.startswith(b"HTTP/1.1 200") and not kept.ended
    # ... so two streams of that client fit under its limit of 2,
    first = await RawHTTP.open(port, get_request("/channels/p/events", as_client("10.0.0.1")))
    second = await RawHTTP.open(port, get_request("/channels/p/stream", as_client("10.0.0.1")))
    await subscribed(running.broker, "p", 2)
    # a third is one too many, wherever it comes through,
    status, headers, body = await refused(
        port, get_request("/channels/p/events", as_client("10.0.0.1"), "Connection: close")
    )
    assert (status, headers["retry-after"]) == (b"HTTP/1.1 503 Service Unavailable", "7")
    assert json.loads(body)["error"] == "too_many_connections"
    # the kept-alive connection too (it carries a request of that client now),
    kept.data = b""
    kept.protocol.transport.write(get_request("/channels/p/longpoll", as_client("10.0.0.1")))
    await bounded(kept.until(lambda _: kept.ended))
    assert kept.data.startswith(b"HTTP/1.1 503")
    # while another client through the same proxy is served, past the proxy's 3 connections,
    third = await RawHTTP.open(port, get_request("/channels/p/events", as_client("10.0.0.2")))
    await subscribed(running.broker, "p", 3)
    # and a client the header does not name is the proxy itself, counted apart.
    status, _, _ = await refused(port, get_request("/channels/p/poll", "Connection: close"))
    assert status == b"HTTP/1.1 200 OK"
    await running.broker.publish("p", "all here")
    for client in (first, third):
        await bounded(client.contains(b"data: all here"))
    await bounded(second.contains(b'"data":"all here"'))
    # One of 10.0.0.1's streams ends: it may open another.
    connections = running.daemon.site.connections
    original, gone = connections.release, Deferred()

    def release(host: str) -> None:
        original(host)
        if host == "10.0.0.1" and not gone.called:
            gone.callback(None)

    connections.release = release
    second.close()
    await bounded(gone)
    again = await RawHTTP.open(port, get_request("/channels/p/stream", as_client("10.0.0.1")))
    await subscribed(running.broker, "p", 3)
    for client in (first, third, again):
        client.close()


@pytest_twisted.ensureDeferred
async def test_behind_an_untrusted_proxy_the_header_changes_nothing(start_daemon: Any) -> None:
    """Without trusted_proxies the header is not believed: the peer is counted."""
    running = start_daemon(limits(max_connections_per_address=1))
    held = await RawHTTP.open(
        running.port, get_request("/channels/u/events", as_client("10.0.0.1"))
    )
    await subscribed(running.broker, "u")
    status, _, _ = await refused(
        running.port, get_request("/channels/u/events", as_client("10.0.0.2"))
    )
    assert status == b"HTTP/1.1 503 Service Unavailable"
    held.close()
