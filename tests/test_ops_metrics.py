"""/metrics, /readyz and the ops listener on an in-process daemon.

Scrapes are parsed with prometheus-client's own parser; the numbers must
move as a client connects, receives and leaves.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from pushd.config import Settings
from tests.clients import RawHTTP, get_request, subscribed
from tests.test_auth import FAR, Keys, assert_refusal, bearer, call
from tests.test_ops_support import bounded, get, post, sample, scrape, ws_close_code, ws_open


@pytest_twisted.ensureDeferred
async def test_metrics_move_as_clients_connect_receive_and_leave(running: Any) -> None:
    url = running.url
    before = await scrape(f"{url}/metrics")
    assert sample(before, "pushd_connections", transport="sse") == 0
    assert sample(before, "pushd_messages_published_total") == 0
    assert sample(before, "pushd_deliveries_total", transport="sse") == 0

    sse = await RawHTTP.open(running.port, get_request("/channels/m/events"))
    stream = await RawHTTP.open(running.port, get_request("/channels/m/stream"))
    await subscribed(running.broker, "m", 2)
    during = await scrape(f"{url}/metrics")
    assert sample(during, "pushd_connections", transport="sse") == 1
    assert sample(during, "pushd_connections", transport="stream") == 1
    assert sample(during, "pushd_channels") == 1

    code, _ = await post(f"{url}/channels/m", b'"hello"')
    assert code == 201
    await sse.contains(b"hello")
    await stream.contains(b"hello")
    poll_code, _, _ = await get(f"{url}/channels/m/poll")
    assert poll_code == 200
    after = await scrape(f"{url}/metrics")
    assert sample(after, "pushd_messages_published_total") == 1
    assert sample(after, "pushd_deliveries_total", transport="sse") == 1
    assert sample(after, "pushd_deliveries_total", transport="stream") == 1
    assert sample(after, "pushd_deliveries_total", transport="poll") == 1
    assert sample(after, "pushd_history_messages") == 1
    # open streams count what they have written so far, not only once they end
    assert sample(after, "pushd_bytes_sent_total", transport="sse") > len(b"hello")
    assert sample(after, "pushd_bytes_sent_total", transport="stream") > len(b"hello")
    assert sample(after, "pushd_http_responses_total", code="201") == 1
    assert sample(after, "pushd_http_responses_total", code="200") >= 3  # poll and scrapes

    gone = running.daemon.site.connections.empty()
    sse.close()
    stream.close()
    await bounded(gone)  # the server saw both leave (no other connection stays open)
    left = await scrape(f"{url}/metrics")
    assert sample(left, "pushd_connections", transport="sse") == 0
    assert sample(left, "pushd_connections", transport="stream") == 0
    assert sample(left, "pushd_bytes_sent_total", transport="sse") > len(b"hello")
    assert sample(left, "pushd_slow_clients_dropped_total", transport="sse") == 0
    assert sample(left, "pushd_resets_total", transport="sse") == 0


@pytest_twisted.ensureDeferred
async def test_resets_and_sources_are_counted(start_daemon: Any) -> None:
    def edit(s: Settings) -> None:
        s.sources = [{"type": "ticker", "channel": "tick", "interval": 0.05}]

    running = start_daemon(edit)
    sse = await RawHTTP.open(running.port, get_request("/channels/r/events?since=bogus-1"))
    await sse.contains(b"event: reset")
    sub = await RawHTTP.open(running.port, get_request("/channels/tick/events"))
    await sub.contains(b"id: ")  # the ticker has published at least once
    samples = await scrape(f"{running.url}/metrics")
    assert sample(samples, "pushd_resets_total", transport="sse") == 1
    assert sample(samples, "pushd_source_published_total", source="ticker:tick") >= 1
    assert sample(samples, "pushd_source_errors_total", source="ticker:tick") == 0
    assert sample(samples, "pushd_source_restarts_total", source="ticker:tick") == 0
    sse.close()
    sub.close()


@pytest_twisted.ensureDeferred
async def test_readyz_is_200_once_listening(running: Any) -> None:
    code, _, body = await get(f"{running.url}/readyz")
    assert (code, body) == (200, b'{"status":"ready"}')
    code, _, _ = await get(f"{running.url}/healthz")
    assert code == 200


@pytest_twisted.ensureDeferred
async def test_metrics_on_their_own_listener_and_readyz_503_while_draining(
    start_daemon: Any,
) -> None:
    def edit(s: Settings) -> None:
        s.metrics.listen = "tcp:0:interface=127.0.0.1"
        s.drain.timeout = 30

    running = start_daemon(edit)
    daemon = running.daemon
    assert daemon.metrics_listener is not None and daemon.metrics_listener.port is not None
    ops = f"http://127.0.0.1:{daemon.metrics_listener.port.getHost().port}"
    code, _, _ = await get(f"{running.url}/metrics")
    assert code == 404  # not on the public listener
    assert sample(await scrape(f"{ops}/metrics"), "pushd_ready") == 1
    code, _, _ = await get(f"{ops}/readyz")
    assert code == 200

    # A WebSocket client that never answers the server's close keeps the drain waiting.
    daemon.web.ws_factory.setProtocolOptions(closeHandshakeTimeout=60)
    ws = await ws_open(running.port, "/channels/x/ws")
    stopping = daemon.stopService()
    await ws.until(lambda data: ws_close_code(data) == 1001)
    code, _, body = await get(f"{ops}/readyz")
    assert (code, body) == (503, b'{"status":"draining"}')
    assert sample(await scrape(f"{ops}/metrics"), "pushd_ready") == 0
    assert not stopping.called
    started = daemon.reactor.seconds()
    daemon.cut_short()  # what a second SIGTERM does
    await bounded(stopping, 5)
    assert daemon.reactor.seconds() - started < 5
    await bounded(ws.until(lambda _: ws.ended))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: Any) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


@pytest_twisted.ensureDeferred
async def test_metrics_on_their_own_listener_need_the_same_rights(
    start_daemon: Any, keys: Keys
) -> None:
    """DESIGN: /metrics is a backend operation wherever it is served; its own
    listener moves it, and does not open it to whoever reaches that port."""

    def edit(s: Settings) -> None:
        keys.edit(s)  # keys configured; 127.0.0.1 a trusted proxy
        s.metrics.listen = "tcp:0:interface=127.0.0.1"

    running = start_daemon(edit)
    port = running.daemon.metrics_listener.port.getHost().port
    ops = f"http://127.0.0.1:{port}/metrics"
    assert (await call("GET", ops))[0] == 200  # loopback, no token
    status, body, headers = await call("GET", ops, headers=FAR)
    assert_refusal(status, body, headers, 401)  # elsewhere, no token
    reader = keys.rs256(keys.claims(subscribe=["news"]))
    status, body, headers = await call("GET", ops, headers=bearer(reader))
    assert_refusal(status, body, headers, 403)  # a token is judged alone
    admin = keys.rs256(keys.claims(admin=True))
    status, text, _ = await call("GET", ops, headers={**FAR, **bearer(admin)})
    assert status == 200 and "pushd_connections" in text


@pytest_twisted.ensureDeferred
async def test_readyz_says_unavailable_on_both_listeners_while_the_store_is_down(
    start_daemon: Any,
) -> None:
    def edit(s: Settings) -> None:
        s.metrics.listen = "tcp:0:interface=127.0.0.1"

    running = start_daemon(edit)
    ops = f"http://127.0.0.1:{running.daemon.metrics_listener.port.getHost().port}"
    running.daemon.registry.available = lambda: False  # what the Redis broker reports
    for url in (running.url, ops):
        code, _, body = await get(f"{url}/readyz")
        assert (code, body) == (503, b'{"status":"unavailable"}'), url
    running.daemon.registry.available = lambda: True
    for url in (running.url, ops):
        assert (await get(f"{url}/readyz"))[:3:2] == (200, b'{"status":"ready"}')
