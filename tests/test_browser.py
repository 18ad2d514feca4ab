"""pushd.js in a real headless Chromium against a real pushd process.

The daemon runs as a child process (``tests.browser.serve``) with a
test-only control port that aborts every subscriber connection; Playwright's
sync API drives Debian's chromium. Pages wait on what they received with
``wait_for_function``; nothing sleeps. Each test asserts what a user of
pushd.js sees: the messages handed to ``onMessage``, in order, once.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any
from urllib.request import urlopen

import pytest

from tests.browser.helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    HERE,
    ROOT,
    PushdProcess,
    RefusingProxy,
    get,
    page_server,
)

sync_api = pytest.importorskip("playwright.sync_api")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)

TRANSPORTS = ["ws", "sse", "stream", "longpoll", "poll"]
WAIT = 10_000  # ms, any single page condition
ARTIFACTS = ROOT / "test-artifacts"


# -- fixtures -------------------------------------------------------------------
@pytest.fixture(scope="module")
def origins() -> Any:
    """Two other origins serving tests/browser: one listed in allowed_origins, one not."""
    with page_server() as listed, page_server() as unlisted:
        yield {"listed": listed, "unlisted": unlisted}


@pytest.fixture(scope="module")
def pushd(tmp_path_factory: Any, origins: dict[str, str]) -> Any:
    config = f"""
allowed_origins = ["{origins["listed"]}"]

[[source]]
type = "ticker"
interval = 0.2
"""
    daemon = PushdProcess(config, tmp_path_factory.mktemp("pushd"))
    yield daemon
    daemon.stop()
    log = daemon.log()
    assert "Traceback (most recent call last)" not in log and "Unhandled" not in log, log


@pytest.fixture(scope="module")
def browser() -> Any:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def context(browser: Any) -> Any:
    ctx = browser.new_context()
    ctx.set_default_timeout(WAIT)
    yield ctx
    ctx.close()


def test_page(context: Any, origin: str, script: str) -> Any:
    """A document of ``origin`` (its /healthz: any real answer will do) with the
    harness and pushd.js from ``script`` loaded into it.

    A real response, not one fulfilled by Playwright: Chromium puts a
    fulfilled document in no address space and then blocks its WebSocket to
    127.0.0.1 (local network access checks).
    """
    page = context.new_page()
    page.on("console", lambda m: print("console:", m.type, m.text))
    page.on("pageerror", lambda e: print("pageerror:", e))
    page.goto(origin + "/healthz")
    page.add_script_tag(path=str(HERE / "harness.js"))
    page.add_script_tag(url=script)
    return page


test_page.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture
def page(context: Any, pushd: PushdProcess) -> Any:
    """A page of the daemon's own origin that loaded /pushd.js."""
    return test_page(context, pushd.url, pushd.url + "/pushd.js")


def start(page: Any, key: str, base: str, channel: str, **options: Any) -> None:
    page.evaluate("([k, b, c, o]) => T.start(k, b, c, o)", [key, base, channel, options])


def wait(page: Any, condition: str, *args: Any) -> None:
    try:
        page.wait_for_function(condition, arg=list(args), timeout=WAIT)
    except sync_api.TimeoutError:
        state = page.evaluate(
            "() => Object.fromEntries(Object.keys(T.subs).map(k => [k, T.view(k)]))"
        )
        raise AssertionError(f"timed out on {condition} {args}: {state}") from None


def got(page: Any, key: str, n: int) -> dict[str, Any]:
    """Wait until ``key`` has received ``n`` messages; its view then."""
    wait(page, "([k, n]) => T.got(k, n)", key, n)
    return view(page, key)


def view(page: Any, key: str) -> dict[str, Any]:
    return page.evaluate("k => T.view(k)", key)  # type: ignore[no-any-return]


def wait_open(page: Any, key: str) -> None:
    wait(page, "([k]) => T.open(k)", key)


def wait_subscribed(page: Any, base: str, channel: str) -> None:
    """Until the daemon counts a subscriber on ``channel`` (a held connection)."""
    page.wait_for_function(
        """async ([base, ch]) => {
            const r = await fetch(base + "/channels/" + ch, {cache: "no-store"});
            return r.ok && (await r.json()).subscribers >= 1;
        }""",
        arg=[base, channel],
        timeout=WAIT,
        polling=20,
    )


def channel_name(request: Any) -> str:
    return "t-" + request.node.name.replace("[", "-").replace("]", "")


# -- every transport, same promise ------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_receives_every_message_once_in_order(
    page: Any, pushd: PushdProcess, transport: str, request: Any
) -> None:
    ch = channel_name(request)
    pushd.publish(ch, "before")  # a live start has no history
    start(page, "s", pushd.url, ch, transport=transport, pollInterval=100)
    wait_open(page, "s")
    published = [{"n": i, "text": "é ✓ \n line"} for i in range(20)]
    ids = [pushd.publish(ch, data) for data in published]
    ids.append(pushd.publish(ch, "end", event="custom"))
    seen = got(page, "s", 21)
    assert seen["data"] == published + ["end"]
    assert seen["ids"] == ids
    assert seen["cursor"] == ids[-1]
    last = seen["messages"][-1]
    assert (last["channel"], last["event"]) == (ch, "custom")
    assert abs(last["time"] - time.time() * 1000) < 60_000
    assert seen["messages"][0]["event"] == "message"
    assert seen["states"][0] == f"connecting:{transport}"
    assert f"open:{transport}" in seen["states"]
    assert seen["transport"] == transport and seen["stats"]["reconnects"] == 0


@pytest.mark.parametrize("transport", ["ws", "sse", "stream"])
def test_a_live_start_on_an_empty_channel_keeps_what_lands_before_the_stream_opens(
    page: Any, pushd: PushdProcess, transport: str, request: Any
) -> None:
    """The race of a live start: the channel's position is read (empty, so
    null), a message is published, and only then does the stream subscribe.
    The page's ``fetch`` is wrapped so that the publish lands exactly there."""
    ch = channel_name(request)
    page.evaluate(
        """([base, ch]) => {
            const original = window.fetch;
            let first = true;
            window.fetch = async (url, init) => {
                const answer = await original(url, init);
                if (first && String(url).includes("/channels/" + ch + "/poll")) {
                    first = false;
                    await original(base + "/channels/" + ch, {method: "POST", body: "between"});
                }
                return answer;
            };
        }""",
        [pushd.url, ch],
    )
    start(page, "s", pushd.url, ch, transport=transport)
    wait_open(page, "s")
    ids = [pushd.publish(ch, "after"), pushd.publish(ch, "last")]
    seen = got(page, "s", 3)
    assert seen["data"] == ["between", "after", "last"]
    assert seen["ids"][1:] == ids and seen["resets"] == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_since_resumes_after_the_cursor(
    page: Any, pushd: PushdProcess, transport: str, request: Any
) -> None:
    ch = channel_name(request)
    ids = [pushd.publish(ch, i) for i in range(5)]
    start(page, "s", pushd.url, ch, transport=transport, since=ids[1], pollInterval=100)
    assert got(page, "s", 3)["data"] == [2, 3, 4]
    ids += [pushd.publish(ch, i) for i in range(5, 7)]
    seen = got(page, "s", 5)
    assert seen["data"] == [2, 3, 4, 5, 6]
    assert seen["resets"] == [] and seen["cursor"] == ids[-1]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_foreign_cursor_resets_then_goes_live(
    page: Any, pushd: PushdProcess, transport: str, request: Any
) -> None:
    ch = channel_name(request)
    last = [pushd.publish(ch, i) for i in range(3)][-1]
    start(page, "s", pushd.url, ch, transport=transport, since="0badc0de-7", pollInterval=100)
    wait(page, "([k]) => T.subs[k].resets.length > 0", "s")
    assert view(page, "s")["resets"] == [{"channel": ch, "cursor": last}]
    wait_open(page, "s")
    pushd.publish(ch, "live")
    seen = got(page, "s", 1)
    assert seen["data"] == ["live"]
    assert seen["stats"]["resets"] == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_resumes_when_the_server_drops_every_connection(
    page: Any, pushd: PushdProcess, transport: str, request: Any
) -> None:
    ch = channel_name(request)
    start(page, "s", pushd.url, ch, transport=transport, pollInterval=100)
    wait_open(page, "s")
    sent = []
    for round in range(3):
        if round:
            if transport != "poll":  # a poll holds no connection to drop
                wait_subscribed(page, pushd.url, ch)
            dropped = pushd.drop()
            assert transport == "poll" or dropped.get(transport, 0) >= 1, dropped
        # Published while the client notices the drop and reconnects.
        sent += [pushd.publish(ch, len(sent) + i) for i in range(10)]
        got(page, "s", len(sent))
    seen = view(page, "s")
    assert seen["data"] == list(range(30))
    assert seen["ids"] == sent
    if transport in ("ws", "sse", "stream"):
        # (A dropped long-poll GET may be retried by Chromium itself on a new
        # connection, unseen by the page; the server did drop it, above.)
        assert seen["stats"]["reconnects"] >= 2
        assert seen["states"].count(f"reconnecting:{transport}") >= 2


# -- fallback when WebSocket cannot open ------------------------------------------
def test_auto_falls_back_to_sse_when_the_upgrade_is_refused(
    context: Any, pushd: PushdProcess, request: Any
) -> None:
    proxy = RefusingProxy(pushd.port)
    try:
        ch = channel_name(request)
        ids = [pushd.publish(ch, i) for i in range(4)]
        page = test_page(context, proxy.url, proxy.url + "/pushd.js")
        start(page, "s", proxy.url, ch, since=ids[1])
        wait_open(page, "s")
        seen = got(page, "s", 2)
        assert proxy.refused >= 1
        assert seen["transport"] == "sse"
        assert seen["states"][0] == "connecting:ws"
        assert "open:ws" not in seen["states"] and "open:sse" in seen["states"]
        ids += [pushd.publish(ch, i) for i in range(4, 8)]
        seen = got(page, "s", 6)
        assert seen["data"] == [2, 3, 4, 5, 6, 7]
        assert seen["ids"] == ids[2:]
        assert seen["transport"] == "sse"
    finally:
        proxy.stop()


# -- cross-origin -----------------------------------------------------------------
def test_another_origin_works_when_listed(
    context: Any, pushd: PushdProcess, origins: dict[str, str], request: Any
) -> None:
    page = context.new_page()
    page.goto(origins["listed"] + "/page.html")
    page.add_script_tag(url=pushd.url + "/pushd.js")
    ch = channel_name(request)
    since = pushd.publish(ch, "old")
    for t in TRANSPORTS:
        start(page, t, pushd.url, ch, transport=t, since=since, pollInterval=100)
    for t in TRANSPORTS:
        wait_open(page, t)
    published = [pushd.publish(ch, i) for i in range(3)]
    for t in TRANSPORTS:
        seen = got(page, t, 3)
        assert seen["data"] == [0, 1, 2], t
        assert seen["ids"] == published, t
    # The ES module too (a cross-origin module import needs CORS).
    page.evaluate(
        "async ([b, c]) => T.start('module', b, c, {transport: 'auto'}, await import(b + '/pushd.mjs'))",
        [pushd.url, ch],
    )
    wait_open(page, "module")
    pushd.publish(ch, "module")
    assert got(page, "module", 1)["data"] == ["module"]


def test_a_listed_origin_retries_a_publish_with_an_idempotency_key(
    context: Any, pushd: PushdProcess, origins: dict[str, str], request: Any
) -> None:
    """A page of a listed origin may send Idempotency-Key (preflighted) and
    read Idempotent-Replayed: its retry of a publish stores one message."""
    page = context.new_page()
    page.goto(origins["listed"] + "/page.html")
    ch = channel_name(request)
    answers = page.evaluate(
        """async ([base, ch]) => {
            const out = [];
            for (let i = 0; i < 2; i++) {
                const r = await fetch(base + "/channels/" + ch, {
                    method: "POST",
                    headers: {"Content-Type": "application/json", "Idempotency-Key": "order-42"},
                    body: JSON.stringify({"n": i}),
                });
                out.push([r.status, r.headers.get("Idempotent-Replayed"), (await r.json()).id]);
            }
            return out;
        }""",
        [pushd.url, ch],
    )
    (s1, replayed1, id1), (s2, replayed2, id2) = answers
    assert (s1, replayed1, s2, replayed2) == (201, None, 201, "true")
    assert id1 == id2
    stored = json.loads(urlopen(f"{pushd.url}/channels/{ch}/poll", timeout=5).read())
    assert [(m["id"], m["data"]) for m in stored["messages"]] == [(id1, {"n": 0})]


def test_another_origin_fails_when_not_listed(
    context: Any, pushd: PushdProcess, origins: dict[str, str], request: Any
) -> None:
    page = context.new_page()
    page.goto(origins["unlisted"] + "/page.html")
    page.add_script_tag(url=pushd.url + "/pushd.js")  # a classic script loads anywhere
    ch = channel_name(request)
    since = pushd.publish(ch, "old")
    backoff = {"initial": 50, "max": 200}
    for t in TRANSPORTS:  # with a cursor, the first request is the transport itself
        start(page, t, pushd.url, ch, transport=t, since=since, pollInterval=100, backoff=backoff)
    every = "([ts, n]) => ts.every((t, i) => T.subs[t].sub.stats.failures >= n[i])"
    wait(page, every, TRANSPORTS, [1] * 5)
    pushd.publish(ch, "not for this page")
    failures = [view(page, t)["stats"]["failures"] for t in TRANSPORTS]
    wait(page, every, TRANSPORTS, [n + 1 for n in failures])  # each tried again since
    for t in TRANSPORTS:
        seen = view(page, t)
        assert seen["data"] == [], t
        assert not any(s.startswith("open") for s in seen["states"]), (t, seen["states"])


# -- the demo and status pages ------------------------------------------------------
def test_demo_page_and_status_page(context: Any, pushd: PushdProcess) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    requested: list[str] = []
    context.on("request", lambda r: requested.append(r.url))
    demo = context.new_page()
    demo.goto(pushd.url + "/")
    for t in TRANSPORTS:  # the ticker reaches every pane
        demo.wait_for_function(
            """t => {
                const pane = document.getElementById("pane-" + t);
                return pane && pane.dataset.state === "open"
                    && Number(pane.querySelector(".messages").textContent) >= 3
                    && pane.querySelector(".log").textContent.includes('"n":');
            }""",
            arg=t,
            timeout=WAIT,
        )
    demo.fill("#publish-data", '{"hello": "from the publish box"}')
    demo.click("#publish-form button")
    for t in TRANSPORTS:
        demo.wait_for_function(
            "t => document.querySelector('#pane-' + t + ' .log').textContent"
            ".includes('from the publish box')",
            arg=t,
            timeout=WAIT,
        )
    assert "published" in demo.text_content("#publish-result")
    demo.click("#pane-sse .drop")
    demo.wait_for_function(
        "() => document.querySelector('#pane-sse .reconnects').textContent === '1'"
        " && document.getElementById('pane-sse').dataset.state === 'open'"
    )
    demo.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)

    status = context.new_page()
    status.goto(pushd.url + "/status")
    # The demo page holds one of each; the status page adds its own WebSocket.
    status.wait_for_function(
        """() => {
            const n = (t) => Number((document.getElementById("conn-" + t) || {}).textContent);
            return n("ws") >= 2 && n("sse") >= 1 && n("stream") >= 1
                && Number(document.getElementById("published-total").textContent.replace(/,/g, "")) > 0;
        }""",
        timeout=WAIT,
    )
    status.wait_for_function(  # two samples make a line
        "() => document.querySelector('#chart-published polyline')"
        ".getAttribute('points').split(' ').length >= 2"
    )
    status.screenshot(path=str(ARTIFACTS / "status.png"), full_page=True)
    foreign = [u for u in requested if not u.startswith(pushd.url + "/")]
    assert foreign == []


# -- unit tests of the client's pieces, in the same Chromium ---------------------
def test_line_splitter_in_the_browser(page: Any) -> None:
    result = page.evaluate(
        """() => {
            const { LineSplitter } = pushd._internal;
            const text = '{"a":1}\\r\\n\\n{"b":"é"}\\nlast line\\r\\n{"partial"';
            const expected = ['{"a":1}', "", '{"b":"é"}', "last line"];
            const failures = [];
            for (let trial = 0; trial < 300; trial++) {
                const s = new LineSplitter();
                const lines = [];
                let i = 0;
                while (i < text.length) {  // every chunking, CR and LF split apart included
                    const n = trial === 0 ? 1 : 1 + Math.floor(Math.random() * 7);
                    lines.push(...s.push(text.slice(i, i + n)));
                    i += n;
                }
                if (JSON.stringify(lines) !== JSON.stringify(expected)) failures.push(lines);
                if (s.flush() !== '{"partial"') failures.push("rest");
            }
            const s = new LineSplitter();
            return { failures, empty: s.push(""), whole: s.push("x\\ny\\n"), after: s.flush() };
        }"""
    )
    assert result == {"failures": [], "empty": [], "whole": ["x", "y"], "after": ""}


def test_backoff_in_the_browser(page: Any) -> None:
    result = page.evaluate(
        """() => {
            const { backoffDelay } = pushd._internal;
            const top = () => 0.999999, bottom = () => 0;
            const ceilings = [0, 1, 2, 3, 4, 5, 6, 40].map(a => backoffDelay(a, 100, 3000, top));
            const floors = [0, 3, 40].map(a => backoffDelay(a, 100, 3000, bottom));
            const samples = Array.from({length: 2000}, () => backoffDelay(3, 100, 3000));
            return {
                ceilings, floors,
                inRange: samples.every(d => d >= 0 && d < 800 && Number.isInteger(d)),
                spread: new Set(samples.map(d => Math.floor(d / 100))).size,
            };
        }"""
    )
    assert result["ceilings"] == [99, 199, 399, 799, 1599, 2999, 2999, 2999]
    assert result["floors"] == [0, 0, 0]
    assert result["inRange"]
    assert result["spread"] == 8  # full jitter: the whole [0, 800) range is used


def test_backoff_grows_while_down_and_resets_once_open(
    page: Any, pushd: PushdProcess, request: Any
) -> None:
    """A server that refuses: delays grow; a connection open a while resets them."""
    ch = channel_name(request)
    # An unknown transport path: every attempt fails at once with 404.
    page.evaluate(
        """([base, ch]) => {
            window.delays = [];
            const real = window.setTimeout;
            window.setTimeout = (fn, ms, ...rest) => { window.delays.push(ms); return real(fn, ms, ...rest); };
            T.start("s", base + "/nowhere", ch, {transport: "poll", since: "x-1",
                    backoff: {initial: 10, max: 80}});
        }""",
        [pushd.url, ch],
    )
    wait(page, "([k]) => T.subs[k].sub.stats.failures >= 8", "s")
    attempts = page.evaluate("() => T.subs.s.sub._attempt")
    assert attempts >= 8
    assert view(page, "s")["state"] == "connecting"
    page.evaluate("() => T.subs.s.sub.close()")
    assert view(page, "s")["states"][-1] == "closed:poll"


def test_served_files(pushd: PushdProcess) -> None:
    status, headers, js = get(pushd.url + "/pushd.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    _, mheaders, mjs = get(pushd.url + "/pushd.mjs")
    assert mheaders["Content-Type"].startswith("text/javascript")
    core = (ROOT / "pushd/static/pushd.core.js").read_bytes()
    assert core in js and core in mjs  # one source, two thin wrappers
    assert b"export { subscribe }" in mjs and b"globalThis.pushd = pushd" in js
    assert get(pushd.url + "/pushd.js", {"If-None-Match": headers["ETag"]})[0] == 304
    status, headers, dts = get(pushd.url + "/pushd.d.ts")
    assert status == 200 and b"export function subscribe" in dts
    status, headers, html = get(pushd.url + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert b"http" not in html.replace(b"http-equiv", b"")  # no CDN, no external font
    assert get(pushd.url + "/static/../tap.py")[0] == 404
    assert json.loads(get(pushd.url + "/static/nope.js")[2])["error"] == "not_found"


# -- tokens ---------------------------------------------------------------------------
SECRET = "browser-test-secret-of-at-least-32-bytes"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: Any) -> Any:
    """A daemon whose channels need a token (a key configured, nothing public)."""
    config = f"""
source = []
[auth]
leeway = 0
[[auth.key]]
alg = "HS256"
secret = "{SECRET}"
"""
    daemon = PushdProcess(config, tmp_path_factory.mktemp("guarded"))
    yield daemon
    daemon.stop()


def token(subscribe: list[str]) -> str:
    import jwt

    claims = {"sub": "page", "exp": int(time.time()) + 600, "pushd": {"subscribe": subscribe}}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_get_token_is_asked_before_every_connection_and_nothing_is_lost(
    context: Any, guarded: PushdProcess, transport: str, request: Any
) -> None:
    ch = "secret-" + transport
    page = test_page(context, guarded.url, guarded.url + "/pushd.js")
    page.evaluate(
        """([base, ch, transport, tok]) => {
            T.tokens = 0;
            T.start("s", base, ch, {
                transport, pollInterval: 100,
                getToken: async () => { T.tokens += 1; return tok; },
            });
            T.start("none", base, ch, { transport, pollInterval: 100 });
        }""",
        [guarded.url, ch, transport, token(["secret-*"])],
    )
    wait_open(page, "s")
    first = [guarded.publish(ch, {"n": i}) for i in range(3)]
    assert got(page, "s", 3)["ids"] == first
    # the connection drops (as a network failure would): the page asks for a
    # token again, resumes with its cursor and misses nothing published meanwhile
    page.evaluate("() => T.subs.s.sub.reconnect()")
    more = [guarded.publish(ch, {"n": i}) for i in range(3, 6)]
    seen = got(page, "s", 6)
    assert seen["ids"] == first + more
    assert page.evaluate("() => T.tokens") >= 2
    # without a token the same channel never opens
    without = view(page, "none")
    assert without["data"] == [] and "open:" + transport not in without["states"]
    assert without["stats"]["failures"] >= 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_get_token_keeps_receiving_across_expiries_with_no_loss(
    context: Any, guarded: PushdProcess, transport: str
) -> None:
    """Tokens that live 1.5 s each: the server ends the subscription as each
    expires (SSE event, stream frame, long-poll answer; a poll is refused
    401), and pushd.js comes back with the next token and its cursor; a
    WebSocket is told ``expired`` and pushd.js sends the next token in an
    auth frame on the same connection. Every message published across the
    expiries arrives once. (Real seconds: a browser cannot share the
    daemon's clock; tests/test_auth_expiry.py covers each transport on it.)"""
    import jwt

    ch = "secret-exp-" + transport
    now = time.time()
    tokens = [
        jwt.encode(
            {"sub": "page", "exp": now + 1.5 * (i + 1), "pushd": {"subscribe": ["secret-*"]}},
            SECRET, algorithm="HS256",
        )
        for i in range(12)
    ]
    page = test_page(context, guarded.url, guarded.url + "/pushd.js")
    page.evaluate(
        """([base, ch, transport, tokens]) => {
            T.tokens = 0;
            T.start("s", base, ch, {
                transport, pollInterval: 100,
                // the first token still valid now
                getToken: async () => {
                    T.tokens += 1;
                    const now = Date.now() / 1000;
                    return tokens.find((t) => JSON.parse(atob(t.split(".")[1])).exp > now + 0.2);
                },
            });
        }""",
        [guarded.url, ch, transport, tokens],
    )
    wait_open(page, "s")
    sent = []
    deadline = now + 4.5  # three tokens' lives: at least two expiries
    while time.time() < deadline:
        sent.append(guarded.publish(ch, {"n": len(sent)}))
        page.wait_for_timeout(150)  # publishing at about 6 msg/s, not waiting for an event
    seen = got(page, "s", len(sent))
    assert seen["ids"] == sent
    assert page.evaluate("() => T.tokens") >= 3, seen["states"]
    if transport == "ws":  # renewed on the open connection: it never reconnected
        assert not any(s.startswith("reconnecting") for s in seen["states"]), seen["states"]
        assert seen["stats"]["failures"] == 0
