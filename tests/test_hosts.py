"""DNS rebinding: a loopback client must name a loopback Host (or a listed one).

A page on a host name that resolves to 127.0.0.1 reaches a loopback pushd as
same-origin; its requests carry that name in ``Host``. They get 403 and
change nothing; a canary subscriber meanwhile loses nothing.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
import treq

from pushd.web.clients import is_loopback
from pushd.web.origins import HostPolicy
from tests.clients import RawHTTP, dechunk, split_response
from tests.clients import subscribed as until_subscribed
from tests.helpers import parse_sse


def request(method: str, path: str, host: str | None, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", *([f"Host: {host}"] if host is not None else [])]
    lines += [*headers, f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode() + body


async def answer(port: int, raw: bytes) -> tuple[bytes, dict[str, str], bytes]:
    conn = await RawHTTP.open(port, raw)
    await conn.until(lambda _: conn.ended)
    status, headers, body = split_response(conn.data)
    if headers.get("transfer-encoding") == "chunked":
        body = b"".join(dechunk(body)[0])
    return status, headers, body


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "localhost.evil.example",
     "10.0.0.1"],
)
@pytest_twisted.ensureDeferred
async def test_a_rebound_host_is_refused_and_stores_nothing(running: Any, host: str) -> None:
    canary = await RawHTTP.open(
        running.port, request("GET", "/channels/c/events", "127.0.0.1")
    )
    await until_subscribed(running.broker, "c")
    first = await treq.post(running.url + "/channels/c", data=b"before")
    assert first.code == 201
    await first.content()

    status, headers, body = await answer(
        running.port, request("POST", "/channels/c", host, body=b"attack")
    )
    assert status == b"HTTP/1.1 403 Forbidden"
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == "forbidden"
    assert "allowed_hosts" in json.loads(body)["message"]
    status, _, _ = await answer(running.port, request("GET", "/channels/c/poll", host))
    assert status == b"HTTP/1.1 403 Forbidden"

    info = await (await treq.get(running.url + "/channels/c")).json()
    assert info["history"] == 1  # the attack stored nothing
    after = await treq.post(running.url + "/channels/c", data=b"after")
    assert after.code == 201
    await after.content()
    await canary.contains(b"data: after")
    events = parse_sse(b"".join(dechunk(split_response(canary.data)[2])[0]).decode())
    assert [e["data"] for e in events if "data" in e] == ["before", "after"]
    canary.close()


@pytest_twisted.ensureDeferred
async def test_a_rebound_host_gets_no_websocket(running: Any) -> None:
    handshake = (
        b"GET /ws HTTP/1.1\r\nHost: evil.example\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\nOrigin: http://evil.example\r\n\r\n"
    )
    conn = await RawHTTP.open(running.port, handshake)
    await conn.contains(b"\r\n\r\n")
    assert conn.data.startswith(b"HTTP/1.1 403 ")
    conn.abort()


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.0.0.1:{port}", "localhost", "LOCALHOST:{port}", "[::1]:{port}",
             "127.1.2.3", None],
)
@pytest_twisted.ensureDeferred
async def test_loopback_names_are_served(running: Any, host: str | None) -> None:
    name = host.format(port=running.port) if host else None
    status, _, body = await answer(running.port, request("POST", "/channels/h", name, body=b"x"))
    assert status == b"HTTP/1.1 201 Created", body


@pytest_twisted.ensureDeferred
async def test_listed_hosts_and_proxied_requests_are_served(start_daemon: Any) -> None:
    running = start_daemon(lambda s: setattr(s, "allowed_hosts", ["push.example"]))
    for host, extra in [
        ("push.example", ()),
        ("PUSH.example:8443", ()),
        ("app.example", ("X-Forwarded-For: 203.0.113.9",)),  # nginx in front names the client
        ("app.example", ("Forwarded: for=203.0.113.9",)),
        ("app.example", ("X-Real-IP: 203.0.113.9",)),
    ]:
        status, _, body = await answer(
            running.port, request("GET", "/channels/h/poll", host, *extra)
        )
        assert status == b"HTTP/1.1 200 OK", (host, body)
    status, _, _ = await answer(running.port, request("GET", "/channels/h/poll", "other.example"))
    assert status == b"HTTP/1.1 403 Forbidden"


def test_policy_rules() -> None:
    policy = HostPolicy(["push.example"])
    assert policy.allows("127.0.0.1", "evil.example", proxied=True)
    assert policy.allows("192.0.2.1", "evil.example", proxied=False)  # not a loopback client
    assert not policy.allows("::1", "evil.example", proxied=False)
    assert not policy.allows("::ffff:127.0.0.1", "evil.example", proxied=False)
    assert policy.allows("::1", "[::1]:8080", proxied=False)
    assert policy.allows("127.0.0.1", "push.example:1", proxied=False)
    assert is_loopback("127.255.0.1") and is_loopback("::1") and not is_loopback("128.0.0.1")
    assert not is_loopback("localhost")  # a name, not an address
