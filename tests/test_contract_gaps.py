"""Rules of DESIGN "Who may publish and read" that the code kept but no test
asserted: the reserved event ``expired``, ``[auth] issuer``, a non-default
``[auth] cookie``, the cross-site refusal even with a valid token, the admin
right on ``/metrics``, ``/status`` from elsewhere with no key, the exact
WebSocket expiry frame, and the defaults DESIGN fixes (``broker_timeout`` 2 s,
``[auth] grace`` 30 s, ``[auth] leeway`` 5 s).

All over real sockets on 127.0.0.1. A client elsewhere is what the trusted
proxy on this machine says it is (``X-Forwarded-For``), as in test_clients
and test_auth. Tokens are HS256, judged on a ``task.Clock`` set to now where
time matters (tests.test_auth_expiry.AuthClock), so nothing sleeps.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import jwt
import pytest
import pytest_twisted

from pushd.config import Auth, AuthKey, Settings, load
from tests.clients import RawHTTP, split_response, subscribed
from tests.test_auth import bearer, call, stored, ws_open
from tests.test_auth_expiry import AuthClock
from tests.test_ws import connect, settings, within  # noqa: F401  (connect: a fixture)

SECRET = "g" * 40
ISSUER = "https://login.example"
FAR = {"X-Forwarded-For": "203.0.113.9"}  # a client elsewhere, as the trusted proxy says
LISTED = "https://app.example"
EVIL = "https://evil.example"


def keyed(**auth: Any) -> Callable[[Settings], None]:
    """An edit for ``start_daemon``: one HS256 key, ``[auth]`` as given (the
    rest at its defaults), 127.0.0.1 a trusted proxy, WebSocket publishing on."""

    def edit(s: Settings) -> None:
        s.auth = Auth(key=[AuthKey(alg="HS256", secret=SECRET)], **auth)
        s.trusted_proxies = ["127.0.0.1"]
        s.websocket.publish = True

    return edit


def sign(now: float | None = None, life: float = 600, **claims: Any) -> str:
    """An HS256 token living ``life`` seconds from ``now``; ``claims`` are
    added to the top level (``pushd=...``, ``iss=...``, ``exp=...``)."""
    now = time.time() if now is None else now
    payload = {"sub": "tester", "exp": now + life, **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256")


def assert_error(status: int, body: Any, expected: tuple[int, str]) -> str:
    """``body`` is exactly ``{"error": code, "message": text}`` with a text; returns it."""
    assert (status, body.get("error") if isinstance(body, dict) else body) == expected, body
    assert set(body) == {"error", "message"}, body
    assert isinstance(body["message"], str) and body["message"], body
    return body["message"]  # type: ignore[no-any-return]


def challenge(headers: Any) -> str:
    values = headers.getRawHeaders("www-authenticate")
    assert values is not None and values[0].startswith("Bearer"), values
    return values[0]  # type: ignore[no-any-return]


async def sse_with(running: Any, channel: str, *header_lines: str) -> RawHTTP:
    request = "\r\n".join(
        [f"GET /channels/{channel}/events HTTP/1.1", "Host: 127.0.0.1", *header_lines,
         "Connection: close", "", ""]
    ).encode()
    return await RawHTTP.open(running.port, request)


# -- 1. "expired" joins "reset" and "closed" as a reserved event name ---------------------
@pytest_twisted.ensureDeferred
async def test_the_event_name_expired_is_refused_over_http_and_stores_nothing(
    running: Any,
) -> None:
    url = running.url + "/channels/ok"
    status, body, _ = await call("POST", url + "?event=expired", data=b"x")
    message = assert_error(status, body, (400, "reserved_event"))
    assert "expired" in message
    status, body, _ = await call(
        "POST", running.url + "/publish", headers={"Content-Type": "application/json"},
        data=b'[{"channel":"ok","data":1},{"channel":"ok","data":2,"event":"expired"}]',
    )
    assert_error(status, body, (400, "reserved_event"))  # the whole batch, not its first item
    assert await running.broker.info("ok") is None
    status, body, _ = await call("GET", url)
    assert_error(status, body, (404, "not_found"))
    # the same request with an ordinary name is published: the name is what was refused
    assert (await call("POST", url + "?event=expiry", data=b"x"))[0] == 201


@pytest_twisted.ensureDeferred
async def test_the_event_name_expired_is_refused_in_a_websocket_publish_frame(
    start_daemon: Any, connect: Any  # noqa: F811
) -> None:
    running = start_daemon(settings(websocket={"publish": True}))
    writer = await connect(running)
    writer.send({"type": "publish", "channel": "chat", "data": 1, "event": "expired"})
    (error,) = await writer.barrier()
    assert (error["type"], error["code"], error.get("channel", "chat")) == (
        "error", "reserved_event", "chat",
    )
    assert set(error) <= {"type", "code", "message", "channel"}, error
    assert "expired" in error["message"]
    assert await running.broker.info("chat") is None
    # the connection lives, and the same frame with another name is published
    writer.send({"type": "publish", "channel": "chat", "data": 1, "event": "said"})
    assert await writer.barrier() == []
    assert (await running.broker.info("chat")).history == 1


# -- 2. [auth] issuer --------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_with_an_issuer_set_a_token_must_name_it(start_daemon: Any) -> None:
    running = start_daemon(keyed(issuer=ISSUER))
    grant = {"publish": ["news"], "subscribe": ["news"]}
    url = running.url + "/channels/news"
    for name, token in [
        ("wrong iss", sign(iss="https://other.example", pushd=grant)),
        ("no iss", sign(pushd=grant)),
    ]:
        status, body, headers = await call(
            "POST", url, data=b"refused", headers={**FAR, **bearer(token)}
        )
        assert_error(status, body, (401, "unauthorized"))
        assert "invalid_token" in challenge(headers), name
        status, body, headers = await call("GET", url + "/poll", headers=bearer(token))
        assert_error(status, body, (401, "unauthorized"))
    assert await stored(running) == []
    good = sign(iss=ISSUER, pushd=grant)
    status, body, _ = await call("POST", url, data=b"hello", headers={**FAR, **bearer(good)})
    assert status == 201, body
    status, page, _ = await call("GET", url + "/poll", headers=bearer(good))
    assert (status, [m["data"] for m in page["messages"]]) == (200, ["hello"])


# -- 3. [auth] cookie ------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_token_is_read_from_the_configured_cookie_only(start_daemon: Any) -> None:
    running = start_daemon(keyed(cookie="session"))
    token = sign(pushd={"subscribe": ["news"]})
    await running.broker.publish("news", "first", "message")
    url = running.url + "/channels/news/poll"
    status, page, _ = await call(
        "GET", url, headers={"Cookie": f"theme=dark; session={token}"}
    )
    assert (status, [m["data"] for m in page["messages"]]) == (200, ["first"])
    # the default cookie's name is no longer looked at: as if no token came
    status, body, headers = await call("GET", url, headers={"Cookie": f"pushd_token={token}"})
    assert "needs a token" in assert_error(status, body, (401, "unauthorized"))
    assert "invalid_token" not in challenge(headers)

    # an EventSource sends no header of its own: the cookie opens its stream
    sse = await sse_with(running, "news", f"Cookie: session={token}")
    try:
        await within(subscribed(running.broker, "news"))
        await running.broker.publish("news", "second", "message")
        data = await sse.contains(b"data: second\n")
        assert data.startswith(b"HTTP/1.1 200 ")
    finally:
        sse.abort()
    refused = await sse_with(running, "news", f"Cookie: pushd_token={token}")
    try:
        data = await refused.until(lambda d: b"\r\n\r\n" in d and d.rstrip().endswith(b"}"))
        status_line, head, raw = split_response(data)
        assert status_line.startswith(b"HTTP/1.1 401 "), data
        assert head["content-type"] == "application/json"
        assert_error(401, json.loads(raw), (401, "unauthorized"))
    finally:
        refused.abort()


# -- 4. cross-site POST and DELETE: refused, token or not ----------------------------------
@pytest_twisted.ensureDeferred
async def test_a_foreign_origin_may_not_post_or_delete_even_with_a_valid_token(
    start_daemon: Any,
) -> None:
    def edit(s: Settings) -> None:
        keyed()(s)
        s.allowed_origins = [LISTED]

    running = start_daemon(edit)
    token = sign(pushd={"publish": ["news"]})
    url = running.url + "/channels/news"
    # the token in each place a page's request may carry it: a cookie comes by itself
    ways = [bearer(token), {"Cookie": f"pushd_token={token}"}]
    for way in ways:
        evil = {**FAR, **way, "Origin": EVIL}
        status, body, _ = await call("POST", url, data=b"forged", headers=evil)
        assert "allowed_origins" in assert_error(status, body, (403, "forbidden"))
        status, body, _ = await call(
            "POST", running.url + "/publish", headers=evil,
            data=b'[{"channel":"news","data":"forged"}]',
        )
        assert_error(status, body, (403, "forbidden"))
    status, body, _ = await call("POST", url + f"?token={token}", data=b"forged",
                                 headers={**FAR, "Origin": EVIL})
    assert_error(status, body, (403, "forbidden"))
    assert await stored(running) == []
    # the same requests from the listed page are served
    for way in ways:
        listed = {**FAR, **way, "Origin": LISTED}
        assert (await call("POST", url, data=b"ok", headers=listed))[0] == 201
    assert await stored(running) == ["ok", "ok"]
    for way in ways:
        status, body, _ = await call("DELETE", url, headers={**FAR, **way, "Origin": EVIL})
        assert_error(status, body, (403, "forbidden"))
    status, info, _ = await call("GET", url, headers={**FAR, **bearer(token)})
    assert (status, info["history"]) == (200, 2)  # still there
    status, _, _ = await call("DELETE", url, headers={**FAR, **bearer(token), "Origin": LISTED})
    assert status == 200
    status, body, _ = await call("GET", url, headers={**FAR, **bearer(token)})
    assert_error(status, body, (404, "not_found"))


# -- 5. /metrics on the main listener: loopback or an admin token ----------------------------
@pytest_twisted.ensureDeferred
async def test_metrics_on_the_main_listener_need_an_admin_token_from_elsewhere(
    start_daemon: Any,
) -> None:
    running = start_daemon(keyed())
    url = running.url + "/metrics"
    admin = sign(pushd={"admin": True})
    status, text, headers = await call("GET", url, headers={**FAR, **bearer(admin)})
    assert status == 200, text
    assert "# TYPE pushd_" in text
    assert headers.getRawHeaders("content-type")[0].startswith("text/plain")
    # a valid token with every channel right but not admin
    everything = sign(pushd={"subscribe": ["*"], "publish": ["*"]})
    status, body, headers = await call("GET", url, headers={**FAR, **bearer(everything)})
    assert_error(status, body, (403, "forbidden"))
    assert headers.getRawHeaders("www-authenticate") is None
    # explicitly not admin, and from this machine: the token alone is judged
    status, body, _ = await call("GET", url, headers=bearer(sign(pushd={"admin": False})))
    assert_error(status, body, (403, "forbidden"))
    status, body, headers = await call("GET", url, headers=FAR)
    assert_error(status, body, (401, "unauthorized"))
    challenge(headers)


# -- 6. /status from elsewhere with no key -----------------------------------------------
@pytest_twisted.ensureDeferred
async def test_status_from_elsewhere_without_a_key_is_forbidden(start_daemon: Any) -> None:
    running = start_daemon(lambda s: setattr(s, "trusted_proxies", ["127.0.0.1"]))
    status, body, headers = await call("GET", running.url + "/status", headers=FAR)
    assert "trusted_proxies" in assert_error(status, body, (403, "forbidden"))
    assert headers.getRawHeaders("www-authenticate") is None
    # a token changes nothing while no key is configured
    status, body, _ = await call(
        "GET", running.url + "/status", headers={**FAR, **bearer(sign(pushd={"admin": True}))}
    )
    assert_error(status, body, (403, "forbidden"))
    # the page itself is there, for this machine
    status, text, headers = await call("GET", running.url + "/status")
    assert status == 200
    assert headers.getRawHeaders("content-type")[0].startswith("text/html")


# -- 7 and 8. the expiry frame; grace and leeway at their defaults ---------------------------
@pytest.fixture
def default_auth(start_daemon: Any) -> tuple[Any, AuthClock]:
    """A keyed daemon with ``[auth] grace`` and ``leeway`` unset, its tokens
    judged on a clock the test advances."""
    running = start_daemon(keyed())
    clock = AuthClock()
    running.daemon.context.tokens.clock = clock
    return running, clock


@pytest_twisted.ensureDeferred
async def test_a_websocket_is_told_exactly_expired_after_the_leeway_and_closed_after_the_grace(
    default_auth: Any,
) -> None:
    running, clock = default_auth
    armed = clock.armed()
    token = sign(now=clock.seconds(), life=60, pushd={"subscribe": ["news"]})
    ws = await ws_open(running, f"/ws?token={token}")
    try:
        await armed
        ws.send({"type": "subscribe", "channel": "news"})
        assert await ws.barrier() == []
        clock.advance(60 + 5 - 0.1)  # past exp, within the default leeway of 5 s
        assert await ws.barrier() == []
        clock.advance(0.2)
        assert await ws.next() == {"type": "expired"}
        clock.advance(30 - 0.1)  # the default grace of 30 s is not over
        assert await ws.barrier() == []
        assert not ws.close_code.called
        clock.advance(0.2)
        assert await within(ws.close_code) == 4001
    finally:
        ws.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_the_default_leeway_is_five_seconds_on_exp_and_nbf(default_auth: Any) -> None:
    running, clock = default_auth
    now = clock.seconds()
    url = running.url + "/channels/news/poll"
    grant = {"subscribe": ["news"]}
    for claims in [{"exp": now - 3}, {"nbf": now + 3}]:
        token = sign(now=now, pushd=grant, **claims)
        status, page, _ = await call("GET", url, headers=bearer(token))
        assert (status, page["messages"]) == (200, []), claims
    for claims, why in [({"exp": now - 10}, "expired"), ({"nbf": now + 10}, "not valid yet")]:
        token = sign(now=now, pushd=grant, **claims)
        status, body, headers = await call("GET", url, headers=bearer(token))
        assert why in assert_error(status, body, (401, "unauthorized"))
        assert "invalid_token" in challenge(headers)


def test_an_empty_config_file_has_the_defaults_design_fixes(tmp_path: Path) -> None:
    path = tmp_path / "pushd.toml"
    path.write_text("")
    loaded = load(str(path))
    assert Settings().broker_timeout == 2.0
    assert loaded.broker_timeout == 2.0
    assert (loaded.auth.grace, loaded.auth.leeway) == (30.0, 5.0)
    assert loaded.auth.cookie == "pushd_token"
    assert (loaded.auth.audience, loaded.auth.issuer) == ("", "")
    assert loaded.auth.public_patterns() == ["*"]  # no key: every channel is public
