"""Tokens (DESIGN "Who may publish and read", issue 20 points 3-4), over real sockets.

One table of tokens is run on every way of reading (poll, long-poll, NDJSON
stream, SSE, a WebSocket subscribe frame) and of publishing (one message,
a batch, a WebSocket frame). Each row asserts the status, and on a refusal
that nothing was stored and that no stream started (the answer is a plain
JSON error, and the channel never had a subscriber).

The daemon has three keys: an HS256 secret, an RS256 and an ES256 public key,
with ``[auth] audience`` set. Keys are made here with ``cryptography``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any, Callable

import jwt
import pytest
import pytest_twisted
import treq
from autobahn.twisted.websocket import WebSocketClientFactory
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory

from pushd.auth import patterns
from pushd.config import Auth, AuthKey, ConfigError, Settings, parse
from tests.clients import RawHTTP, split_response, subscribed
from tests.test_ws import Client, RawHandshake, handshake, within

AUDIENCE = "pushd-test"
SECRET = "s" * 40
FAR = {"X-Forwarded-For": "203.0.113.9"}  # a client elsewhere, as the trusted proxy says


def pem_public(private: Any) -> bytes:
    return private.public_key().public_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class Keys:
    """The keys of the daemon under test, and tokens signed with them."""

    def __init__(self, where: Path) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.rsa_pem = pem_public(self.rsa)
        (where / "rs256.pub").write_bytes(self.rsa_pem)
        (where / "es256.pub").write_bytes(pem_public(self.ec))
        (where / "hs256.secret").write_text(SECRET + "\n")
        self.tables = [
            AuthKey(alg="HS256", secret_file=str(where / "hs256.secret")),
            AuthKey(alg="RS256", public_key_file=str(where / "rs256.pub")),
            AuthKey(alg="ES256", public_key_file=str(where / "es256.pub")),
        ]

    def claims(self, **pushd: Any) -> dict[str, Any]:
        return {"sub": "tester", "aud": AUDIENCE, "exp": int(time.time()) + 600,
                "pushd": pushd}

    def rs256(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.rsa, algorithm="RS256")

    def edit(self, s: Settings) -> None:
        s.auth = Auth(key=list(self.tables), audience=AUDIENCE)
        s.trusted_proxies = ["127.0.0.1"]
        s.websocket.publish = True


@pytest.fixture(scope="module")
def keys(tmp_path_factory: Any) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_with_public_key(keys: Keys, claims: dict[str, Any]) -> str:
    """The key-confusion attack: an HS256 token whose HMAC secret is the
    server's RS256 public key (PyJWT refuses to make one, so by hand)."""
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(keys.rsa_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def alg_none(claims: dict[str, Any]) -> str:
    head = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{head}.{b64(json.dumps(claims).encode())}."


GRANT = {"subscribe": ["news"], "publish": ["news"]}


def token_rows(right: str) -> list[tuple[str, Callable[[Keys], str | None], int]]:
    """(name, token maker, expected status) for ``right`` ("subscribe" or "publish")."""
    ok = 200 if right == "subscribe" else 201

    def signed(**changes: Any) -> Callable[[Keys], str]:
        def make(keys: Keys) -> str:
            claims = keys.claims(**GRANT)
            claims.update(changes)
            return keys.rs256(claims)

        return make

    rows: list[tuple[str, Callable[[Keys], str | None], int]] = [
        ("none", lambda k: None, 401),
        ("malformed", lambda k: "not-a.jwt", 401),
        ("bad signature",
         lambda k: jwt.encode(k.claims(**GRANT), k.other_rsa, algorithm="RS256"), 401),
        ("alg none", lambda k: alg_none(k.claims(**GRANT)), 401),
        ("HS256 signed with the RS256 public key",
         lambda k: hs256_with_public_key(k, k.claims(**GRANT)), 401),
        ("expired", signed(exp=int(time.time()) - 60), 401),
        ("not yet valid", signed(nbf=int(time.time()) + 600), 401),
        ("wrong audience", signed(aud="elsewhere"), 401),
        ("channel not granted", signed(pushd={right: ["sports", "new"]}), 403),
        ("pattern match", signed(pushd={right: ["sports", "n*s"]}), ok),
    ]
    if right == "publish":
        rows.append(("subscribe right used to publish",
                     signed(pushd={"subscribe": ["news", "*"]}), 403))
    return rows


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


async def call(method: str, url: str, **kw: Any) -> tuple[int, Any, Any]:
    response = await treq.request(method, url, **kw)
    text = await response.text("utf-8")
    is_json = response.headers.getRawHeaders("content-type") == ["application/json"]
    return response.code, (json.loads(text) if is_json else text), response.headers


async def stored(running: Any, channel: str = "news") -> list[Any]:
    page = await running.broker.read(channel, None, 100)
    return [m.data for m in page.messages]


def assert_refusal(status: int, body: Any, headers: Any, expected: int) -> None:
    code = {401: "unauthorized", 403: "forbidden"}[expected]
    assert (status, body["error"]) == (expected, code), body
    challenge = headers.getRawHeaders("www-authenticate")
    if expected == 401:
        assert challenge is not None and challenge[0].startswith("Bearer"), challenge
    else:
        assert challenge is None


# -- WebSocket helpers --------------------------------------------------------------
async def ws_open(running: Any, path: str, headers: dict[str, str] | None = None) -> Client:
    factory = WebSocketClientFactory(
        f"ws://127.0.0.1:{running.port}{path}", headers=headers or {}, reactor=reactor
    )
    factory.protocol = Client
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", running.port)
    proto: Client = await within(endpoint.connect(factory))
    await within(proto.is_open)
    return proto


async def ws_refused(running: Any, path: str, extra: str = "") -> tuple[int, bytes]:
    """A handshake that is expected not to succeed: its status and answer."""
    proto = RawHandshake(handshake(running.port, path, extra=extra))
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", running.port)
    await within(endpoint.connect(Factory.forProtocol(lambda: proto)))
    try:
        return await within(proto.status), proto.buffer
    finally:
        proto.transport.abortConnection()


# -- reading --------------------------------------------------------------------------
READERS = ["poll", "longpoll", "stream", "events", "ws"]


async def read_http(running: Any, transport: str, token: str | None, expected: int) -> None:
    url = f"{running.url}/channels/news/{transport}"
    if transport in ("poll", "longpoll"):
        status, body, headers = await call("GET", url + "?timeout=0", headers=bearer(token))
        if expected == 200:
            assert (status, body["messages"]) == (200, [])
        else:
            assert_refusal(status, body, headers, expected)
        return
    lines = [f"Authorization: Bearer {token}"] if token else []
    request = "\r\n".join(
        [f"GET /channels/news/{transport} HTTP/1.1", "Host: 127.0.0.1", *lines,
         "Connection: close", "", ""]
    ).encode()
    raw = await RawHTTP.open(running.port, request)
    try:
        if expected == 200:
            await within(subscribed(running.broker, "news"))
            await running.broker.publish("news", "hello", "message")
            await raw.contains(b"hello")
            assert raw.data.startswith(b"HTTP/1.1 200 ")
            return
        data = await raw.until(
            lambda data: b"\r\n\r\n" in data and data.rstrip().endswith(b"}")
        )
        status, headers, body = split_response(data)
        code = {401: "unauthorized", 403: "forbidden"}[expected]
        assert status.startswith(b"HTTP/1.1 %d " % expected), data
        assert headers["content-type"] == "application/json"  # an answer, not a stream
        assert json.loads(body)["error"] == code
        assert ("www-authenticate" in headers) == (expected == 401)
        assert running.broker.subscribers("news") == 0
    finally:
        raw.abort()


async def read_ws(running: Any, token: str | None, expected: int) -> None:
    if expected == 401 and token is not None:  # a bad token: refused at the handshake
        status, answer = await ws_refused(running, f"/ws?token={token}")
        assert status == 401
        assert b"\r\nWWW-Authenticate: Bearer" in answer
        return
    path = "/ws" if token is None else f"/ws?token={token}"
    client = await ws_open(running, path)
    try:
        client.send({"type": "subscribe", "channel": "news"})
        frames = await client.barrier()
        if expected == 200:
            assert frames == []
            await running.broker.publish("news", "hello", "message")
            assert (await client.next())["data"] == "hello"
            return
        code = {401: "unauthorized", 403: "forbidden"}[expected]
        assert [(f["type"], f["code"], f["channel"]) for f in frames] == [
            ("error", code, "news")
        ]
        assert running.broker.subscribers("news") == 0
        # the connection stays open for what it may do
        client.send({"type": "subscribe", "channel": "open.news"})
        assert await client.barrier() == []
    finally:
        client.transport.abortConnection()


@pytest.mark.parametrize("transport", READERS)
@pytest.mark.parametrize(("name", "make", "expected"), token_rows("subscribe"),
                         ids=[r[0] for r in token_rows("subscribe")])
@pytest_twisted.ensureDeferred
async def test_reading_with_each_token(
    start_daemon: Any, keys: Keys, transport: str, name: str,
    make: Callable[[Keys], str | None], expected: int,
) -> None:
    def edit(s: Settings) -> None:
        keys.edit(s)
        s.auth.public = ["open.*"]

    running = start_daemon(edit)
    token = make(keys)
    if transport == "ws":
        await read_ws(running, token, expected)
    else:
        await read_http(running, transport, token, expected)


# -- publishing -----------------------------------------------------------------------
WRITERS = ["one", "batch", "ws"]


async def publish_ws(running: Any, token: str | None, expected: int) -> None:
    extra = "".join(f"{k}: {v}\r\n" for k, v in FAR.items())
    if expected == 401 and token is not None:
        status, _ = await ws_refused(running, f"/ws?token={token}", extra)
        assert status == 401
        return
    path = "/ws" if token is None else f"/ws?token={token}"
    client = await ws_open(running, path, FAR)
    try:
        client.send({"type": "publish", "channel": "news", "data": "hello"})
        frames = await client.barrier()
        if expected == 201:
            assert frames == []
            return
        code = {401: "unauthorized", 403: "forbidden"}[expected]
        assert [(f["type"], f["code"], f["channel"]) for f in frames] == [
            ("error", code, "news")
        ]
    finally:
        client.transport.abortConnection()


@pytest.mark.parametrize("way", WRITERS)
@pytest.mark.parametrize(("name", "make", "expected"), token_rows("publish"),
                         ids=[r[0] for r in token_rows("publish")])
@pytest_twisted.ensureDeferred
async def test_publishing_with_each_token(
    start_daemon: Any, keys: Keys, way: str, name: str,
    make: Callable[[Keys], str | None], expected: int,
) -> None:
    running = start_daemon(keys.edit)
    token = make(keys)
    # from a client elsewhere (through the trusted proxy): no loopback right
    headers = {**FAR, **bearer(token)}
    if way == "ws":
        await publish_ws(running, token, expected)
    elif way == "one":
        status, body, answer = await call(
            "POST", running.url + "/channels/news", data=b"hello", headers=headers
        )
        if expected == 201:
            assert status == 201, body
        else:
            assert_refusal(status, body, answer, expected)
    else:
        status, body, answer = await call(
            "POST", running.url + "/publish", headers=headers,
            data=b'[{"channel":"news","data":"hello"}]',
        )
        if expected == 201:
            assert status == 201, body
        else:
            assert_refusal(status, body, answer, expected)
    assert await stored(running) == (["hello"] if expected == 201 else [])


# -- where a token comes from, and the loopback rule --------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_token_in_a_header_the_query_or_the_cookie(
    start_daemon: Any, keys: Keys
) -> None:
    running = start_daemon(keys.edit)
    claims = keys.claims(subscribe=["news"], publish=["news"])
    url = running.url + "/channels/news"
    # three ways and three algorithms
    hs = jwt.encode(claims, SECRET, algorithm="HS256")
    es = jwt.encode(claims, keys.ec, algorithm="ES256")
    rs = keys.rs256(claims)
    assert (await call("POST", url, data=b"1", headers={**FAR, **bearer(hs)}))[0] == 201
    assert (await call("POST", url + f"?token={es}", data=b"2", headers=FAR))[0] == 201
    cookie = {**FAR, "Cookie": f"theme=dark; pushd_token={rs}"}
    assert (await call("POST", url, data=b"3", headers=cookie))[0] == 201
    assert await stored(running) == ["1", "2", "3"]
    # and for reading: the SSE of a browser (EventSource sets no header)
    for query, headers in [(f"?token={es}", {}), ("", {"Cookie": f"pushd_token={hs}"})]:
        status, body, _ = await call("GET", url + "/poll" + query, headers=headers)
        assert (status, [m["data"] for m in body["messages"]]) == (200, ["1", "2", "3"])
    # a bearer token is taken before the query's: a bad header is not rescued
    status, body, _ = await call(
        "GET", url + f"/poll?token={es}", headers=bearer("garbage")
    )
    assert status == 401


@pytest_twisted.ensureDeferred
async def test_without_a_token_loopback_keeps_the_backend_and_public_channels_are_open(
    start_daemon: Any, keys: Keys
) -> None:
    def edit(s: Settings) -> None:
        keys.edit(s)
        s.auth.public = ["ticker", "open.*"]

    running = start_daemon(edit)
    # a loopback client without a token: publishes, reads state, deletes
    assert (await call("POST", running.url + "/channels/news", data=b"x"))[0] == 201
    assert (await call("GET", running.url + "/channels/news"))[0] == 200
    # but reading a channel that is not public needs a token, loopback or not
    status, body, headers = await call("GET", running.url + "/channels/news/poll")
    assert_refusal(status, body, headers, 401)
    for channel in ("ticker", "open.x"):
        assert (await call("GET", running.url + f"/channels/{channel}/poll"))[0] == 200
    assert (await call("GET", running.url + "/channels/tickers/poll"))[0] == 401
    # a token is judged alone: a loopback request whose token lacks the right is refused
    token = keys.rs256(keys.claims(subscribe=["news"]))
    status, body, headers = await call(
        "DELETE", running.url + "/channels/news", headers=bearer(token)
    )
    assert_refusal(status, body, headers, 403)
    # admin pages: loopback without a token, or a token with admin
    status, body, headers = await call("GET", running.url + "/status", headers=FAR)
    assert_refusal(status, body, headers, 401)
    status, _, _ = await call("GET", running.url + "/status", headers=bearer(token))
    assert status == 403
    admin = keys.rs256(keys.claims(admin=True))
    assert (await call("GET", running.url + "/status", headers={**FAR, **bearer(admin)}))[0] == 200
    # the publish right covers GET and DELETE of the channel
    publisher = keys.rs256(keys.claims(publish=["news"]))
    assert (await call("DELETE", running.url + "/channels/news",
                       headers={**FAR, **bearer(publisher)}))[0] == 200


# -- WebSocket: the handshake and auth frames ------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_websocket_handshake_with_a_bad_token_or_an_ungranted_channel_url(
    start_daemon: Any, keys: Keys
) -> None:
    running = start_daemon(keys.edit)
    expired = keys.rs256({**keys.claims(subscribe=["news"]), "exp": int(time.time()) - 60})
    status, answer = await ws_refused(
        running, "/ws", extra=f"Authorization: Bearer {expired}\r\n"
    )
    assert status == 401 and b"WWW-Authenticate: Bearer" in answer
    # a channel URL is judged at the handshake too
    assert (await ws_refused(running, "/channels/news/ws"))[0] == 401
    sports = keys.rs256(keys.claims(subscribe=["sports"]))
    assert (await ws_refused(running, f"/channels/news/ws?token={sports}"))[0] == 403
    assert running.broker.subscribers("news") == 0
    # and with the right token the channel URL subscribes
    news = keys.rs256(keys.claims(subscribe=["news"]))
    client = await ws_open(running, "/channels/news/ws", {"Cookie": f"pushd_token={news}"})
    try:
        await within(subscribed(running.broker, "news"))
        await running.broker.publish("news", "hello", "message")
        assert (await client.next())["data"] == "hello"
    finally:
        client.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_an_auth_frame_replaces_the_connections_token(
    start_daemon: Any, keys: Keys
) -> None:
    running = start_daemon(keys.edit)
    client = await ws_open(running, "/ws")
    try:
        client.send({"type": "subscribe", "channel": "news"})
        (refused,) = await client.barrier()
        assert (refused["code"], refused["channel"]) == ("unauthorized", "news")
        # a bad token is an error frame, and changes nothing
        client.send({"type": "auth", "token": alg_none(keys.claims(subscribe=["*"]))})
        (bad,) = await client.barrier()
        assert (bad["type"], bad["code"]) == ("error", "unauthorized")
        # a good one is taken: its exp comes back, and it opens the channel
        claims = keys.claims(subscribe=["news"])
        client.send({"type": "auth", "token": keys.rs256(claims)})
        assert await client.barrier() == [{"type": "auth", "ok": True, "exp": claims["exp"]}]
        client.send({"type": "subscribe", "channel": "news"})
        assert await client.barrier() == []
        await running.broker.publish("news", "hello", "message")
        assert (await client.next())["data"] == "hello"
        # replaced again by one that grants something else: it is judged alone, so
        # the channel it does not grant is unsubscribed, and a new subscribe refused
        no_exp = {k: v for k, v in keys.claims(subscribe=["sports"]).items() if k != "exp"}
        client.send({"type": "auth", "token": keys.rs256(no_exp)})
        ok, dropped = await client.barrier()
        assert ok == {"type": "auth", "ok": True, "exp": None}
        assert (dropped["type"], dropped["code"], dropped["channel"]) == (
            "error", "forbidden", "news"
        )
        assert running.broker.subscribers("news") == 0
        client.send({"type": "subscribe", "channel": "sports"})
        assert await client.barrier() == []
        await running.broker.publish("news", "gone", "message")
        await running.broker.publish("sports", "kept", "message")
        assert (await client.next())["data"] == "kept"  # nothing from news came first
        client.send({"type": "subscribe", "channel": "news2"})
        (forbidden,) = await client.barrier()
        assert (forbidden["code"], forbidden["channel"]) == ("forbidden", "news2")
    finally:
        client.transport.abortConnection()


# -- settings ----------------------------------------------------------------------------
def key_file(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_key_settings_are_checked_at_load(tmp_path: Path, keys: Keys) -> None:
    rs_pub = key_file(tmp_path, "rs.pub", keys.rsa_pem)
    ed_pub = key_file(tmp_path, "ed.pub", pem_public(ed25519.Ed25519PrivateKey.generate()))
    bad = [
        ({"alg": "none", "secret": SECRET}, "alg none is refused"),
        ({"alg": "HS256", "public_key_file": rs_pub}, "never a public key"),
        ({"alg": "HS256"}, "needs exactly one of secret and secret_file"),
        ({"alg": "HS256", "secret": "short"}, "at least 32 bytes"),
        ({"alg": "RS256", "secret": SECRET}, "takes a public_key_file"),
        ({"alg": "RS256"}, "needs a public_key_file"),
        ({"alg": "ES256", "public_key_file": rs_pub}, "is not a key for ES256"),
        ({"alg": "RS256", "public_key_file": str(tmp_path / "missing")}, "cannot read"),
        ({"alg": "HS256", "secret": SECRET, "kidd": "k"}, "unknown setting [auth.key] kidd"),
        ({"alg": "XS256", "secret": SECRET}, "alg must be one of"),
    ]
    for table, problem in bad:
        with pytest.raises(ConfigError, match=problem.replace("[", r"\[")):
            parse({"auth": {"key": [table]}})
    with pytest.raises(ConfigError, match=r"unknown setting \[auth\] secret"):
        parse({"auth": {"secret": SECRET}})
    with pytest.raises(ConfigError, match="once an"):
        parse({"auth": {"public": ["news"]}})  # no key: it would do nothing
    settings = parse({"auth": {"audience": "a", "key": [
        {"alg": "HS512", "secret": "x" * 64, "kid": "one"},
        {"alg": "EdDSA", "public_key_file": ed_pub},
    ]}})
    assert [k.alg for k in settings.auth.key] == ["HS512", "EdDSA"]
    assert settings.auth.public_patterns() == []
    assert parse({}).auth.public_patterns() == ["*"]


@pytest.mark.parametrize(
    ("names", "yes", "no"),
    [
        (("*",), ["a", "a.b", ""], []),
        (("news.*",), ["news.", "news.x.y"], ["news", "xnews.a"]),
        (("a*b*c",), ["abc", "aXbYc", "abbc"], ["ab", "abcd"]),
        (("a.b",), ["a.b"], ["aXb", "a.bc"]),  # only * is special
        ((), [], ["a"]),
    ],
)
def test_patterns(names: tuple[str, ...], yes: list[str], no: list[str]) -> None:
    match = patterns(names)
    assert all(match(c) for c in yes)
    assert not any(match(c) for c in no)


def test_a_remembered_token_still_expires_on_the_daemons_clock(keys: Keys) -> None:
    """Grants are kept per token string, but never past exp + leeway; a token
    not valid yet is not kept as refused once its nbf comes."""
    from twisted.internet.task import Clock

    from pushd.auth import Tokens, Unauthorized

    clock = Clock()
    clock.advance(1_000_000)
    tokens = Tokens(Auth(key=list(keys.tables), audience=AUDIENCE, leeway=5), clock)
    claims = {**keys.claims(subscribe=["news"]), "exp": 1_000_100}
    token = keys.rs256(claims)
    assert tokens.grants(token).subscribe("news")
    clock.advance(104)  # exp + leeway not yet passed
    assert tokens.grants(token).exp == 1_000_100
    clock.advance(2)
    with pytest.raises(Unauthorized, match="expired"):
        tokens.grants(token)
    later = keys.rs256({**keys.claims(publish=["a"]), "nbf": 1_000_200, "exp": 1_000_900})
    with pytest.raises(Unauthorized, match="not valid yet"):
        tokens.grants(later)
    clock.advance(100)
    assert tokens.grants(later).publish("a")


@pytest_twisted.ensureDeferred
async def test_without_a_key_tokens_are_not_looked_at(running: Any) -> None:
    """No key: an auth frame is answered ok (no token is needed for anything),
    and a request's token, even garbage, changes nothing."""
    client = await ws_open(running, "/ws?token=garbage")
    try:
        client.send({"type": "auth", "token": "garbage"})
        assert await client.barrier() == [{"type": "auth", "ok": True, "exp": None}]
    finally:
        client.transport.abortConnection()
    url = running.url + "/channels/news"
    assert (await call("POST", url, data=b"x", headers=bearer("garbage")))[0] == 201
    assert (await call("GET", url + "/poll?token=garbage"))[0] == 200
