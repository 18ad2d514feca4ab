"""Who may do what with no key configured (DESIGN "Who may publish and read"):
channels are readable by anyone; backend operations are for loopback
clients only, a proxy's header counts only from a trusted proxy, and a page
of another origin may not POST or DELETE.

Every request here comes from 127.0.0.1: a client elsewhere is what a proxy
on this machine says it is, which is exactly the case the rules are for.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
import treq
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

from pushd.config import ConfigError, Settings
from pushd.web.clients import Clients
from tests.test_ws import Client, within

FAR = {"X-Forwarded-For": "203.0.113.9"}


async def call(method: str, url: str, **kw: Any) -> tuple[int, Any]:
    response = await treq.request(method, url, **kw)
    text = await response.text("utf-8")
    return response.code, (json.loads(text) if text else None)


class Who:
    """A request as the checks read it: a peer and some headers."""

    def __init__(self, peer: str, **headers: str) -> None:
        self.peer_host = peer
        self.headers = {k.replace("_", "-").lower().encode(): v.encode() for k, v in headers.items()}

    def getHeader(self, name: bytes) -> bytes | None:
        return self.headers.get(name)


@pytest.mark.parametrize(
    ("trusted", "who", "address", "local"),
    [
        ([], Who("127.0.0.1"), "127.0.0.1", True),
        ([], Who("::1"), "::1", True),
        ([], Who("192.0.2.7"), "192.0.2.7", False),
        # a proxy header from a peer that is not trusted: never loopback, and
        # the address stays the peer's (the header could say anything)
        ([], Who("127.0.0.1", x_forwarded_for="127.0.0.1"), "127.0.0.1", False),
        ([], Who("127.0.0.1", x_real_ip="127.0.0.1"), "127.0.0.1", False),
        ([], Who("127.0.0.1", forwarded="for=127.0.0.1"), "127.0.0.1", False),
        # a trusted proxy: the rightmost hop that is not itself trusted
        (["127.0.0.1"], Who("127.0.0.1", x_forwarded_for="203.0.113.9"), "203.0.113.9", False),
        (["127.0.0.1"], Who("127.0.0.1", x_forwarded_for="127.0.0.1"), "127.0.0.1", True),
        (["127.0.0.1"], Who("127.0.0.1"), "127.0.0.1", True),
        (
            ["127.0.0.0/8", "10.0.0.0/8"],
            Who("127.0.0.1", x_forwarded_for="127.0.0.5, 198.51.100.1, 10.1.2.3"),
            "198.51.100.1",
            False,
        ),
        # a client cannot hide behind a loopback hop it wrote itself
        (["127.0.0.1"], Who("127.0.0.1", x_forwarded_for="127.0.0.1, 203.0.113.9"),
         "203.0.113.9", False),
        (["::1"], Who("::1", x_forwarded_for="2001:db8::5"), "2001:db8::5", False),
    ],
)
def test_client_address_and_locality(
    trusted: list[str], who: Who, address: str, local: bool
) -> None:
    clients = Clients(trusted)
    assert clients.address(who) == address
    assert clients.is_local(who) is local


def test_a_bad_trusted_proxy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="trusted_proxies"):
        Clients(["not-an-address"])


def trust_local(s: Settings) -> None:
    s.trusted_proxies = ["127.0.0.1"]


@pytest_twisted.ensureDeferred
async def test_backend_operations_are_for_loopback_clients_only(start_daemon: Any) -> None:
    running = start_daemon(trust_local)
    url = running.url + "/channels/news"
    # a client elsewhere, as the proxy on this machine says
    for method, path, kw in [
        ("POST", "/channels/news", {"data": b"hello"}),
        ("POST", "/publish", {"data": b'[{"channel":"news","data":1}]'}),
        ("GET", "/channels/news", {}),
        ("DELETE", "/channels/news", {}),
        ("GET", "/metrics", {}),
    ]:
        code, body = await call(method, running.url + path, headers=FAR, **kw)
        assert code == 403, (method, path, code, body)
        assert body["error"] == "forbidden"
        assert "trusted_proxies" in body["message"]
    # nothing was stored; reading stays open to anyone
    code, page = await call("GET", url + "/poll", headers=FAR)
    assert (code, page["messages"]) == (200, [])
    # this machine, directly or through the trusted proxy
    code, body = await call("POST", url, data=b"one")
    assert code == 201
    code, body = await call("POST", url, data=b"two", headers={"X-Forwarded-For": "127.0.0.1"})
    assert code == 201
    code, info = await call("GET", url)
    assert (code, info["history"]) == (200, 2)
    code, page = await call("GET", url + "/poll", headers=FAR)
    assert [m["data"] for m in page["messages"]] == ["one", "two"]


@pytest_twisted.ensureDeferred
async def test_a_proxy_header_from_an_untrusted_peer_is_never_loopback(running: Any) -> None:
    url = running.url + "/channels/news"
    for header in ("X-Forwarded-For", "X-Real-IP", "Forwarded"):
        code, body = await call("POST", url, data=b"x", headers={header: "127.0.0.1"})
        assert (code, body["error"]) == (403, "forbidden"), header
    assert (await call("GET", url + "/poll"))[1]["messages"] == []


@pytest_twisted.ensureDeferred
async def test_a_page_of_another_origin_may_not_post_or_delete(start_daemon: Any) -> None:
    running = start_daemon(lambda s: setattr(s, "allowed_origins", ["https://app.example"]))
    url = running.url + "/channels/news"
    evil = {"Origin": "https://evil.example"}
    code, body = await call("POST", url, data=b"x", headers=evil)
    assert (code, body["error"]) == (403, "forbidden")
    assert "allowed_origins" in body["message"]
    code, _ = await call("POST", running.url + "/publish", headers=evil,
                         data=b'[{"channel":"news","data":1}]')
    assert code == 403
    assert (await call("GET", url + "/poll"))[1]["messages"] == []
    # the server's own origin, and a listed one, may
    own = {"Origin": f"http://127.0.0.1:{running.port}"}
    assert (await call("POST", url, data=b"a", headers=own))[0] == 201
    assert (await call("POST", url, data=b"b", headers={"Origin": "https://app.example"}))[0] == 201
    assert (await call("DELETE", url, headers=evil))[0] == 403
    code, page = await call("GET", url + "/poll", headers=evil)  # reading is not refused
    assert [m["data"] for m in page["messages"]] == ["a", "b"]
    assert (await call("DELETE", url, headers=own))[0] == 200


@pytest_twisted.ensureDeferred
async def test_websocket_publish_frames_follow_the_same_rule(start_daemon: Any) -> None:
    def edit(s: Settings) -> None:
        trust_local(s)
        s.websocket.publish = True

    running = start_daemon(edit)

    async def open_ws(headers: dict[str, str]) -> Client:
        factory = WebSocketClientFactory(
            f"ws://127.0.0.1:{running.port}/ws", headers=headers, reactor=reactor
        )
        factory.protocol = Client
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", running.port)
        proto: Client = await within(endpoint.connect(factory))
        await within(proto.is_open)
        return proto

    far = await open_ws(FAR)
    near = await open_ws({})
    try:
        far.send({"type": "subscribe", "channel": "news"})
        far.send({"type": "publish", "channel": "news", "data": "from afar"})
        frames = await far.barrier()
        errors = [f for f in frames if f["type"] == "error"]
        assert [e["code"] for e in errors] == ["forbidden"], frames
        near.send({"type": "publish", "channel": "news", "data": "from here"})
        await near.barrier()
        # the far client's subscription still works: it reads what was published
        message = await far.next()
        assert (message["type"], message["data"]) == ("message", "from here")
    finally:
        for proto in (far, near):
            proto.transport.abortConnection()


def test_a_unix_socket_peer_is_this_machine() -> None:
    clients = Clients([])
    assert clients.is_local(Who("")) is True
    assert clients.is_local(Who("", x_forwarded_for="203.0.113.9")) is False
