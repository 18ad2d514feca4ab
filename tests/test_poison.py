"""No poison messages: JSON pushd could not send back out is never stored.

Each input (``POST /channels/{ch}``, every item of ``POST /publish``, and
WebSocket frames) goes through the one strict decoder: RFC 8259, no NaN or
Infinity, no number that overflows a double, at most 64 nested
arrays/objects. What it refuses is a JSON 400 (an error frame on a
WebSocket, which stays open), stores nothing, and loses nothing for a
subscriber already reading the channel. And whether a message was JSON or
text travels with it: on SSE the JSON string ``"abc"`` is ``data: "abc"``,
the text ``abc`` is ``data: abc``.
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
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from pushd.broker.memory import MemoryBroker
from pushd.errors import PushdError
from pushd.model import MAX_DEPTH, Payload, json_payload, loads_json, parse_body, text_payload
from pushd.wire import encode
from tests.clients import Collector, RawHTTP, dechunk, get_request, split_response
from tests.clients import subscribed as until_subscribed
from tests.helpers import parse_sse
from tests.test_ws import Client, settings, within

JSON = {"Content-Type": "application/json"}
sync = SynchronousTestCase()


def nested(depth: int, kind: str = "[") -> str:
    if kind == "[":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


# What the decoder refuses, as it arrives: (name, JSON text).
BAD_JSON: list[tuple[str, str]] = [
    ("65 arrays deep", nested(65)),
    ("65 objects deep", nested(65, "{")),
    ("955 deep: was stored, then broke every poll", nested(955)),
    ("30,000 deep: was a 500 with a traceback", nested(30_000)),
    ("NaN", "NaN"),
    ("Infinity", "Infinity"),
    ("-Infinity", "-Infinity"),
    ("NaN inside", '{"v":[1,NaN]}'),
    ("1e400", "1e400"),
    ("-1e400", "-1e400"),
    ("1e400 inside", '{"v":[1e400]}'),
    ("an integer past a double", "1" + "0" * 400),
]


# -- the decoder ---------------------------------------------------------------
def refused(text: str) -> PushdError:
    with pytest.raises(PushdError) as caught:
        loads_json(text)
    error = caught.value
    assert (error.status, error.code) == (400, "bad_json")
    assert error.message and len(error.message) < 200  # says why, without echoing the input
    return error


@pytest.mark.parametrize(("name", "text"), BAD_JSON)
def test_decoder_refuses(name: str, text: str) -> None:
    refused(text)


def test_depth_64_is_the_limit_for_arrays_objects_and_both() -> None:
    assert MAX_DEPTH == 64
    for kind in "[{":
        loads_json(nested(64, kind))
        assert "64" in refused(nested(65, kind)).message
    mixed = '[{"a":' * 32 + "1" + "}]" * 32  # 64 levels, alternating
    loads_json(mixed)
    refused("[" + mixed + "]")
    refused(nested(1_000_000))  # far past the recursion limit: still a 400


def test_brackets_in_strings_do_not_nest_and_many_siblings_are_flat() -> None:
    assert loads_json('["' + "[" * 100 + '", "\\"[{"]') == ["[" * 100, '"[{']
    assert loads_json("[" + ",".join(["[]"] * 1000) + "]") == [[]] * 1000
    deep_in_string = json.dumps({"s": nested(500)})
    assert loads_json(deep_in_string) == {"s": nested(500)}


def test_numbers_that_fit_a_double_pass_and_the_rest_are_refused() -> None:
    for ok in ["1e308", "-1e308", "1.7976931348623157e308", "1e-400", "0e999999",
               "1" + "0" * 300, "0." + "0" * 400 + "1", "12345678901234567890"]:
        loads_json(ok)
    assert loads_json("1e-400") == 0.0  # underflow is a number, just a small one
    for bad in ["1e309", "2e308", "-1.8e308", "1" + "0" * 309, "-" + "9" * 400,
                "1" + "0" * 200 + "e150", "[1,2,1e400]"]:
        refused(bad)


def test_constants_and_lone_surrogates_are_refused_even_inside_strings_ok() -> None:
    assert loads_json('"NaN Infinity 1e400"') == "NaN Infinity 1e400"
    for bad in ["nan", "[Infinity]", '{"x":-Infinity}', '"\\ud800"', '["\\udfff"]', "{nope"]:
        refused(bad)


def test_a_body_is_json_or_text_and_encoded_once() -> None:
    as_json = parse_body(b'"abc"', "application/json")
    as_text = parse_body(b'"abc"', "text/plain")
    assert (as_json.is_json, as_json.json, as_json.value) == (True, b'"abc"', "abc")
    assert (as_text.is_json, as_text.json, as_text.value) == (False, b'"\\"abc\\""', '"abc"')
    vendor = parse_body(b'{ "a" : [1, 2.5] }', "application/vnd.x+json; charset=utf-8")
    assert (vendor.is_json, vendor.json) == (True, b'{"a":[1,2.5]}')
    for bad in (b"NaN", nested(65).encode(), b"1e400"):
        with pytest.raises(PushdError):
            parse_body(bad, "application/json")
        assert parse_body(bad, None).is_json is False  # as text it is just text


def test_python_values_are_held_to_the_same_rules() -> None:
    assert json_payload({"k": [1, "é"]}).json == '{"k":[1,"é"]}'.encode()
    assert text_payload("x\ny").json == b'"x\\ny"'
    deep: Any = 1
    for _ in range(65):
        deep = [deep]
    for bad in [float("nan"), float("inf"), [1, -float("inf")], 10**400, deep,
                "\ud800", {1, 2}, object()]:
        with pytest.raises(PushdError) as caught:
            json_payload(bad)
        assert caught.value.code == "bad_json"


def test_the_broker_refuses_what_it_could_not_encode_and_stores_nothing() -> None:
    broker = MemoryBroker(Clock(), epoch="ep")
    watcher: list[Any] = []
    broker.subscribe("c", _Sink(watcher))
    for bad in [float("nan"), {"v": float("inf")}, 10**400, "\udc00"]:
        failure = sync.failureResultOf(broker.publish("c", bad), PushdError)
        assert failure.value.code == "bad_json"
    batch = [("c", 1, "message"), ("c", float("nan"), "message")]
    failure = sync.failureResultOf(broker.publish_many(batch))
    assert failure.value.code == "bad_json"
    assert sync.successResultOf(broker.info("c")).history == 0
    assert watcher == []
    # Text, JSON and ready-made payloads are all fine.
    for data in ["text", {"a": 1}, Payload(b'"abc"', None), text_payload("t")]:
        sync.successResultOf(broker.publish("c", data))
    assert [m.payload.is_json for m in watcher] == [False, True, True, False]


class _Sink:
    def __init__(self, into: list[Any]) -> None:
        self.into = into

    def deliver(self, message: Any) -> None:
        self.into.append(message)

    def reset(self, channel: str, cursor: str | None) -> None:
        raise AssertionError("no reset expected")

    def closed(self, channel: str) -> None:
        raise AssertionError("no close expected")


# -- over the wire -------------------------------------------------------------
async def call(method: str, url: str, **kw: Any) -> tuple[int, Any, Any]:
    response = await within(treq.request(method, url, **kw))
    text = await response.text("utf-8")
    return response.code, text, response.headers


async def post(running: Any, channel: str, body: bytes, headers: dict[str, str]) -> str:
    response = await within(
        treq.post(f"{running.url}/channels/{channel}", data=body, headers=headers)
    )
    assert response.code == 201, await response.text()
    return (await response.json())["id"]  # type: ignore[no-any-return]


async def open_ws(running: Any, path: str = "/ws") -> Client:
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{running.port}{path}", reactor=reactor)
    factory.protocol = Client
    client: Client = await within(
        TCP4ClientEndpoint(reactor, "127.0.0.1", running.port).connect(factory)
    )
    await within(client.is_open)
    return client


def assert_bad_json(code: int, text: str, headers: Any, name: str) -> None:
    assert code == 400, (name, text[:200])
    assert headers.getRawHeaders("content-type") == ["application/json"], name
    body = json.loads(text)
    assert body["error"] == "bad_json", name
    assert isinstance(body["message"], str) and body["message"], name


async def canary(running: Any, channel: str) -> Collector:
    stream = await Collector.get(f"{running.url}/channels/{channel}/events")
    await until_subscribed(running.broker, channel)
    return stream


async def check_nothing_lost(
    running: Any, stream: Collector, start: str, ids: list[str]
) -> None:
    """The canary got exactly ``ids``, and history holds exactly ``start`` and them."""
    await stream.contains(f"id: {ids[-1]}\n".encode())
    got = [e["id"] for e in parse_sse(stream.data.decode()) if "data" in e]
    assert got == ids
    page = await running.broker.read("x", None, 100)
    assert [m.id for m in page.messages] == [start, *ids]


async def readable_everywhere(running: Any, channel: str, since: str, want: list[Any]) -> None:
    """After ``since``, every transport gives ``want`` (the messages' data)."""
    base = f"{running.url}/channels/{channel}"
    for kind in ("poll", "longpoll"):
        code, text, _ = await call("GET", f"{base}/{kind}?since={since}")
        assert code == 200, (kind, text[:200])
        assert [m["data"] for m in json.loads(text)["messages"]] == want, kind
    stream = await Collector.get(f"{base}/stream?since={since}")
    await stream.count(b"\n", len(want))
    assert [json.loads(line)["data"] for line in stream.data.splitlines()] == want
    sse = await Collector.get(f"{base}/events?since={since}&envelope=1")
    await sse.count(b"\n\n", len(want) + 1)
    events = [e for e in parse_sse(sse.data.decode()) if "data" in e]
    assert [json.loads(e["data"])["data"] for e in events] == want
    ws = await open_ws(running, f"/channels/{channel}/ws?since={since}")
    assert [f["data"] for f in await ws.messages(len(want))] == want
    assert await ws.barrier() == []
    ws.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_http_publish_refuses_bad_json_stores_nothing_and_loses_nothing(
    running: Any,
) -> None:
    start = await post(running, "x", b"start", {})
    stream = await canary(running, "x")
    before = await post(running, "x", b'{"n":1}', JSON)
    for name, text in BAD_JSON:
        for kind in ("application/json", "application/vnd.pushd+json; charset=utf-8"):
            got = await call(
                "POST", running.url + "/channels/x", data=text.encode(),
                headers={"Content-Type": kind},
            )
            assert_bad_json(*got, name)
        assert (await call("GET", running.url + "/channels/fresh"))[0] == 404
        got = await call(
            "POST", running.url + "/channels/fresh", data=text.encode(), headers=JSON
        )
        assert_bad_json(*got, name)
        assert (await call("GET", running.url + "/channels/fresh"))[0] == 404, name
        assert running.broker.channel_count() == 1, name  # "fresh" was never made
    after = await post(running, "x", b"after", {})
    await check_nothing_lost(running, stream, start, [before, after])
    await readable_everywhere(running, "x", start, [{"n": 1}, "after"])


@pytest_twisted.ensureDeferred
async def test_batch_refuses_any_bad_item_stores_nothing_and_loses_nothing(
    running: Any,
) -> None:
    start = await post(running, "x", b"start", {})
    stream = await canary(running, "x")
    before = await post(running, "x", b"before", {})
    for name, text in BAD_JSON:
        body = '[{"channel":"x","data":1},{"channel":"fresh","data":%s}]' % text
        got = await call("POST", running.url + "/publish", data=body.encode(), headers=JSON)
        assert_bad_json(*got, name)
        assert (await call("GET", running.url + "/channels/fresh"))[0] == 404, name
    after = await post(running, "x", b"after", {})
    await check_nothing_lost(running, stream, start, [before, after])
    await readable_everywhere(running, "x", start, ["before", "after"])


@pytest_twisted.ensureDeferred
async def test_websocket_publish_frames_refused_connection_lives_nothing_lost(
    start_daemon: Any,
) -> None:
    running = start_daemon(settings(websocket={"publish": True}))
    start = await post(running, "x", b"start", {})
    stream = await canary(running, "x")
    writer = await open_ws(running)
    writer.send({"type": "publish", "channel": "x", "data": "before"})
    assert await writer.barrier() == []
    for name, text in BAD_JSON:
        for channel in ("x", "fresh"):
            frame = '{"type":"publish","channel":"%s","data":%s}' % (channel, text)
            writer.sendMessage(frame.encode())
            answer = await writer.next()
            assert (answer["type"], answer["code"]) == ("error", "bad_json"), name
            assert answer["message"], name
        assert await writer.barrier() == [], name  # a ping is still answered
    assert await running.broker.info("fresh") is None
    writer.send({"type": "publish", "channel": "x", "data": "after"})
    assert await writer.barrier() == []
    page = (await running.broker.read("x", start, 10)).messages
    await check_nothing_lost(running, stream, start, [m.id for m in page])
    await readable_everywhere(running, "x", start, ["before", "after"])
    writer.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_a_30000_level_websocket_frame_gets_an_error_and_the_connection_lives(
    start_daemon: Any,
) -> None:
    running = start_daemon(settings(websocket={"publish": True}))
    client = await open_ws(running, "/channels/deep/ws")
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        await _send_deep_frames(running, client)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert [e for e in logged if "log_failure" in e] == []  # no traceback in the log
    # Depth 64 is the limit for a frame as a whole: data 63 deep is fine.
    client.sendMessage(('{"type":"publish","channel":"deep","data":%s}' % nested(63)).encode())
    [message] = await client.messages(1)
    assert message["data"] == json.loads(nested(63))
    assert await running.broker.info("other") is None
    assert client.transport.connected
    client.transport.abortConnection()


async def _send_deep_frames(running: Any, client: Client) -> None:
    for frame in (
        nested(30_000),
        '{"type":"publish","channel":"deep","data":%s}' % nested(30_000),
        '{"type":"subscribe","channel":"other","since":{"x":%s}}' % nested(30_000),
    ):
        assert len(frame) < running.daemon.settings.limits.message_size
        client.sendMessage(frame.encode())
        answer = await client.next()
        assert (answer["type"], answer["code"]) == ("error", "bad_json")
        assert await client.barrier() == []  # open, and answering pings


# -- JSON or text, kept on every transport -------------------------------------
@pytest_twisted.ensureDeferred
async def test_a_json_string_and_the_same_text_on_every_transport(running: Any) -> None:
    start = await post(running, "s", b"start", {})
    ids = [
        await post(running, "s", b'"abc"', JSON),
        await post(running, "s", b"abc", {"Content-Type": "text/plain"}),
        await post(running, "s", b'"a\\nb"', JSON),
        await post(running, "s", b"a\nb", {}),
    ]
    messages = (await running.broker.read("s", start, 10)).messages
    times = [m.time for m in messages]
    datas = [b'"abc"', b'"abc"', b'"a\\nb"', b'"a\\nb"']  # the same JSON inside a message

    def obj(i: int) -> bytes:
        return b'{"id":"%s","channel":"s","event":"message","data":%s,"time":%d}' % (
            ids[i].encode(), datas[i], times[i]
        )

    page = b'{"messages":[%s],"cursor":"%s"}' % (b",".join(map(obj, range(4))), ids[3].encode())
    for kind in ("poll", "longpoll"):
        response = await within(treq.get(f"{running.url}/channels/s/{kind}?since={start}"))
        assert await response.content() == page, kind

    stream = await Collector.get(f"{running.url}/channels/s/stream?since={start}")
    await stream.count(b"\n", 4)
    assert stream.data == b"".join(b'{"type":"message",' + obj(i)[1:] + b"\n" for i in range(4))

    sse = await RawHTTP.open(running.port, get_request(f"/channels/s/events?since={start}"))
    await sse.contains(b"data: b\n\n")
    chunks = dechunk(split_response(sse.data)[2])[0]
    assert chunks[1:] == [
        b'id: %s\ndata: "abc"\n\n' % ids[0].encode(),
        b"id: %s\ndata: abc\n\n" % ids[1].encode(),
        b'id: %s\ndata: "a\\nb"\n\n' % ids[2].encode(),
        b"id: %s\ndata: a\ndata: b\n\n" % ids[3].encode(),
    ]
    assert [e["data"] for e in parse_sse(sse.data.decode()) if "data" in e] == [
        '"abc"', "abc", '"a\\nb"', "a\nb"
    ]
    sse.close()

    env = await RawHTTP.open(
        running.port, get_request(f"/channels/s/events?since={start}&envelope=1")
    )
    await env.count(b"}\n\n", 4)
    chunks = dechunk(split_response(env.data)[2])[0]
    assert chunks[1:] == [b"id: %s\ndata: %s\n\n" % (ids[i].encode(), obj(i)) for i in range(4)]
    env.close()

    ws = await open_ws(running, f"/channels/s/ws?since={start}")
    frames = await ws.messages(4)
    assert [json.dumps(f, separators=(",", ":"), ensure_ascii=False).encode() for f in frames] == [
        b'{"type":"message",' + obj(i)[1:] for i in range(4)
    ]
    ws.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_strings_in_batches_and_websocket_frames_are_json(start_daemon: Any) -> None:
    running = start_daemon(settings(websocket={"publish": True}))
    sse = await RawHTTP.open(running.port, get_request("/channels/j/events"))
    await until_subscribed(running.broker, "j")
    items = [{"channel": "j", "data": "from a batch"}]
    got = await call("POST", running.url + "/publish", data=json.dumps(items).encode(),
                     headers=JSON)
    assert got[0] == 201
    writer = await open_ws(running)
    writer.send({"type": "publish", "channel": "j", "data": "from a frame"})
    assert await writer.barrier() == []
    await sse.contains(b'data: "from a frame"\n\n')
    assert [e["data"] for e in parse_sse(sse.data.decode()) if "data" in e] == [
        '"from a batch"', '"from a frame"'
    ]
    sse.close()
    writer.transport.abortConnection()


def test_each_message_is_encoded_from_its_one_json_text() -> None:
    broker = MemoryBroker(Clock(), epoch="ep")
    m = sync.successResultOf(broker.publish("c", parse_body(b'{"a": 1.50}', "application/json")))
    assert m.payload.json == b'{"a":1.5}'
    assert encode(m, "json") == (
        b'{"id":"ep-1","channel":"c","event":"message","data":{"a":1.5},"time":0}'
    )
    assert encode(m, "sse") == b'id: ep-1\ndata: {"a":1.5}\n\n'
    assert encode(m, "typed") == b'{"type":"message",' + encode(m, "json")[1:]


def test_source_lines_keep_json_or_text() -> None:
    from pushd.sources.base import Source, decode_line

    source = Source(MemoryBroker(Clock(), epoch="ep"), "t")
    ok, payload = decode_line(source, b'"007"', True)
    assert ok and payload is not None and (payload.is_json, payload.json) == (True, b'"007"')
    ok, payload = decode_line(source, b'"007"', False)
    assert ok and payload is not None and (payload.is_json, payload.text) == (False, '"007"')
    for bad in (b"NaN", b"[1e400]", nested(65).encode()):
        assert decode_line(source, bad, True) == (False, None)
    assert source.errors == 3
