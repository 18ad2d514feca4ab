"""pushd mounted under a prefix of a host Klein site (examples/embed.py), over
a real port: the host's own route, publishing through pushd's routes and
through the shared broker, and SSE, all under one reactor and one broker."""

from __future__ import annotations

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web.server import Site

from examples.embed import Shop
from pushd.config import Settings
from pushd.tap import embed
from tests.clients import Collector
from tests.clients import subscribed as until_subscribed
from tests.helpers import parse_sse


@pytest_twisted.ensureDeferred
async def test_a_host_klein_app_serves_its_routes_and_pushd_under_a_prefix() -> None:
    settings = Settings()
    settings.sources = []
    pushd = embed(settings, reactor)
    pushd.startService()
    port = reactor.listenTCP(0, Site(Shop(pushd).app.resource()), interface="127.0.0.1")
    base = f"http://127.0.0.1:{port.getHost().port}"
    try:
        hello = await treq.get(base + "/hello")
        assert hello.code == 200 and await hello.content() == b"hello from the host app\n"

        sse = await Collector.get(base + "/push/channels/orders/events")
        assert sse.response.code == 200
        assert sse.response.headers.getRawHeaders("content-type") == [
            "text/event-stream; charset=utf-8"
        ]
        await until_subscribed(pushd.broker, "orders")

        own = await treq.post(base + "/orders", data=b"one pizza")  # the host publishes
        assert own.code == 201
        own_id = (await own.content()).decode().strip()
        direct = await treq.post(base + "/push/channels/orders", data=b"from pushd")
        assert direct.code == 201
        direct_id = (await direct.json())["id"]

        await sse.contains(b"data: from pushd\n")
        events = [e for e in parse_sse(sse.data.decode()) if "data" in e]
        assert [(e["id"], e["data"]) for e in events] == [
            (own_id, '{"order":"one pizza"}'),
            (direct_id, "from pushd"),
        ]
        poll = await treq.get(base + "/push/channels/orders/poll")  # through Klein's router
        assert [m["id"] for m in (await poll.json())["messages"]] == [own_id, direct_id]
        missing = await treq.get(base + "/push/nowhere")
        assert missing.code == 404 and (await missing.json())["error"] == "not_found"
    finally:
        await pushd.stopService()
        await port.stopListening()


def test_embed_listens_nowhere_itself() -> None:
    settings = Settings()
    settings.listen = ["tcp:0"]
    daemon = embed(settings, reactor)
    assert daemon.listeners == []
    assert daemon.resource() is daemon.site.handle.resource


