"""The four HTTP transports over a real port: bytes on the wire, live
delivery, resume, reset, closed, and the same ids through every transport."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.defer import Deferred

from tests.clients import Collector, RawHTTP, dechunk, get_request, split_response
from tests.clients import subscribed as until_subscribed
from tests.helpers import parse_sse

JSON = {"Content-Type": "application/json"}


pytestmark = pytest.mark.both_brokers


async def publish(running: Any, channel: str, data: Any, event: str | None = None) -> str:
    path = f"/channels/{channel}" + (f"?event={event}" if event else "")
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    headers = {} if isinstance(data, bytes) else JSON
    response = await treq.post(running.url + path, data=body, headers=headers)
    assert response.code == 201
    return (await response.json())["id"]  # type: ignore[no-any-return]


async def get_json(url: str, **kw: Any) -> tuple[int, Any, Any]:
    response = await treq.get(url, **kw)
    text = await response.text()
    return response.code, (json.loads(text) if text else None), response.headers


def subscribed(running: Any, channel: str, n: int = 1) -> Deferred[None]:
    return until_subscribed(running.broker, channel, n)


# -- exact bytes ---------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_sse_bytes_on_the_wire(running: Any) -> None:
    raw = await RawHTTP.open(running.port, get_request("/channels/news/events"))
    await raw.contains(b"retry: 3000\n\n\r\n")  # headers and retry: before any message
    status, headers, body = split_response(raw.data)
    assert status == b"HTTP/1.1 200 OK"
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert headers["transfer-encoding"] == "chunked"
    first = await publish(running, "news", {"a": 1})
    second = await publish(running, "news", b"two\nlines", event="note")
    await raw.contains(b"lines\n\n\r\n")
    chunks, ended = dechunk(split_response(raw.data)[2])
    assert chunks == [
        b"retry: 3000\n\n",
        b"id: " + first.encode() + b'\ndata: {"a":1}\n\n',
        b"id: " + second.encode() + b"\nevent: note\ndata: two\ndata: lines\n\n",
    ]
    assert not ended
    raw.close()


@pytest_twisted.ensureDeferred
async def test_stream_bytes_on_the_wire(running: Any) -> None:
    raw = await RawHTTP.open(running.port, get_request("/channels/news/stream"))
    await raw.contains(b"\r\n\r\n")
    status, headers, _ = split_response(raw.data)
    assert status == b"HTTP/1.1 200 OK"
    assert headers["content-type"] == "application/x-ndjson; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    await subscribed(running, "news")
    mid = await publish(running, "news", {"a": "é"})
    await raw.contains(b"}\n\r\n")
    chunks, _ = dechunk(split_response(raw.data)[2])
    time = json.loads(chunks[0])["time"]
    assert chunks == [
        (
            '{"type":"message","id":"%s","channel":"news","event":"message",'
            '"data":{"a":"é"},"time":%d}\n' % (mid, time)
        ).encode()
    ]
    raw.close()


@pytest_twisted.ensureDeferred
async def test_poll_bytes_and_etag(running: Any) -> None:
    mid = await publish(running, "news", "hi")
    response = await treq.get(running.url + "/channels/news/poll")
    body = await response.content()
    time = json.loads(body)["messages"][0]["time"]
    assert (
        body
        == (
            '{"messages":[{"id":"%s","channel":"news","event":"message","data":"hi","time":%d}],'
            '"cursor":"%s"}' % (mid, time, mid)
        ).encode()
    )
    assert response.headers.getRawHeaders("etag") == [f'"{mid}"']
    # Nothing new: 304 and no body.
    again = await treq.get(
        running.url + f"/channels/news/poll?since={mid}", headers={"If-None-Match": f'"{mid}"'}
    )
    assert again.code == 304
    assert await again.content() == b""
    # Something new: 200 again, with the next message only.
    nxt = await publish(running, "news", "more")
    code, page, headers = await get_json(
        running.url + f"/channels/news/poll?since={mid}", headers={"If-None-Match": f'"{mid}"'}
    )
    assert code == 200
    assert [m["id"] for m in page["messages"]] == [nxt]
    assert headers.getRawHeaders("etag") == [f'"{nxt}"']


@pytest_twisted.ensureDeferred
async def test_longpoll_bytes(running: Any) -> None:
    mid = await publish(running, "news", "hi")
    raw = await RawHTTP.open(running.port, get_request(f"/channels/news/longpoll?since={mid}"))
    await subscribed(running, "news")
    nxt = await publish(running, "news", [1])

    def complete(data: bytes) -> bool:
        head, sep, body = data.partition(b"\r\n\r\n")
        return bool(sep) and len(body) >= int(split_response(data)[1]["content-length"])

    await raw.until(complete)
    status, headers, body = split_response(raw.data)
    assert status == b"HTTP/1.1 200 OK"
    # one renderer for every answer: a held answer is sized, not chunked
    assert int(headers["content-length"]) == len(body)
    assert headers["content-type"] == "application/json"
    page = json.loads(body)
    assert page == {
        "messages": [
            {
                "id": nxt,
                "channel": "news",
                "event": "message",
                "data": [1],
                "time": page["messages"][0]["time"],
            }
        ],
        "cursor": nxt,
    }
    raw.close()


# -- live, resume, reset, closed -------------------------------------------
@pytest_twisted.ensureDeferred
async def test_poll_resume_reset_and_limit(running: Any) -> None:
    ids = [await publish(running, "c", i) for i in range(5)]
    code, page, _ = await get_json(running.url + f"/channels/c/poll?since={ids[1]}&limit=2")
    assert [m["id"] for m in page["messages"]] == ids[2:4]
    assert page["cursor"] == ids[3]
    code, page, _ = await get_json(running.url + "/channels/c/poll?limit=2")
    assert [m["id"] for m in page["messages"]] == ids[3:]
    code, page, _ = await get_json(running.url + "/channels/c/poll?since=foreign-1")
    assert page == {"messages": [], "cursor": ids[-1], "reset": True}


@pytest_twisted.ensureDeferred
async def test_longpoll_answers_at_once_when_behind_and_on_reset(running: Any) -> None:
    ids = [await publish(running, "c", i) for i in range(3)]
    code, page, _ = await get_json(running.url + f"/channels/c/longpoll?since={ids[0]}")
    assert [m["id"] for m in page["messages"]] == ids[1:]
    code, page, _ = await get_json(running.url + "/channels/c/longpoll?since=zz-9")
    assert page == {"messages": [], "cursor": ids[-1], "reset": True}


@pytest_twisted.ensureDeferred
async def test_longpoll_without_since_waits_for_the_next_message(running: Any) -> None:
    await publish(running, "c", "old")
    pending = Deferred.fromCoroutine(get_json(running.url + "/channels/c/longpoll"))
    await subscribed(running, "c")
    new = await publish(running, "c", "new")
    code, page, _ = await pending
    assert [m["id"] for m in page["messages"]] == [new]


@pytest_twisted.ensureDeferred
async def test_messages_between_two_longpolls_are_not_lost(running: Any) -> None:
    first = await publish(running, "c", 0)
    later = [await publish(running, "c", i) for i in (1, 2)]  # nobody is polling now
    code, page, _ = await get_json(running.url + f"/channels/c/longpoll?since={first}")
    assert [m["id"] for m in page["messages"]] == later


@pytest_twisted.ensureDeferred
async def test_longpoll_on_deleted_channel_answers_closed(running: Any) -> None:
    mid = await publish(running, "c", 0)
    pending = Deferred.fromCoroutine(get_json(running.url + f"/channels/c/longpoll?since={mid}"))
    await subscribed(running, "c")
    await treq.delete(running.url + "/channels/c")
    code, page, _ = await pending
    assert page == {"messages": [], "cursor": mid, "closed": True}


@pytest_twisted.ensureDeferred
async def test_longpoll_timeout_answers_with_same_cursor(running: Any) -> None:
    mid = await publish(running, "c", 0)
    code, page, _ = await get_json(running.url + f"/channels/c/longpoll?since={mid}&timeout=0.05")
    assert (code, page) == (200, {"messages": [], "cursor": mid})


async def _sse_roundtrip(running: Any, url: str, headers: dict | None = None) -> Collector:
    return await Collector.get(running.url + url, headers=headers or {})


@pytest_twisted.ensureDeferred
async def test_sse_resume_from_header_and_query_then_live(running: Any) -> None:
    ids = [await publish(running, "c", i) for i in range(4)]
    by_header = await _sse_roundtrip(running, "/channels/c/events", {"Last-Event-ID": ids[1]})
    by_query = await _sse_roundtrip(running, f"/channels/c/events?lastEventId={ids[2]}")
    live = await publish(running, "c", 4)
    await by_header.contains(live.encode() + b"\n")
    await by_query.contains(live.encode() + b"\n")
    assert [e["id"] for e in parse_sse(by_header.data.decode()) if "id" in e] == ids[2:] + [live]
    assert [e["id"] for e in parse_sse(by_query.data.decode()) if "id" in e] == [ids[3], live]


@pytest_twisted.ensureDeferred
async def test_sse_reset_and_closed(running: Any) -> None:
    last = await publish(running, "c", 0)
    stream = await _sse_roundtrip(running, "/channels/c/events", {"Last-Event-ID": "zz-1"})
    await stream.contains(b"event: reset")
    live = await publish(running, "c", 1)
    await stream.contains(live.encode())
    await treq.delete(running.url + "/channels/c")
    await stream.done
    events = [e for e in parse_sse(stream.data.decode()) if "data" in e]
    assert events[0] == {
        "event": "reset",
        "id": last,
        "data": json.dumps({"channel": "c", "cursor": last}, separators=(",", ":")),
    }
    assert events[1]["id"] == live
    assert events[2] == {"event": "closed", "id": live, "data": '{"channel":"c"}'}
    assert len(events) == 3


@pytest_twisted.ensureDeferred
async def test_sse_reset_on_empty_channel_has_no_id(running: Any) -> None:
    stream = await _sse_roundtrip(running, "/channels/empty/events?lastEventId=zz-1")
    await stream.contains(b"event: reset")
    await stream.contains(
        b"\n\n",
    )
    assert b'event: reset\ndata: {"channel":"empty","cursor":null}\n\n' in stream.data
    assert b"id:" not in stream.data


@pytest_twisted.ensureDeferred
async def test_sse_envelope_carries_whole_messages(running: Any) -> None:
    stream = await _sse_roundtrip(running, "/channels/c/events?envelope=1")
    await subscribed(running, "c")
    mid = await publish(running, "c", "text", event="custom")
    await stream.contains(mid.encode() + b"\n")
    await stream.contains(b"}\n\n")
    (event,) = [e for e in parse_sse(stream.data.decode()) if "data" in e]
    assert event["event"] == "message"  # no event: line, the name is inside
    body = json.loads(event["data"])
    assert (body["id"], body["event"], body["data"]) == (mid, "custom", "text")


@pytest_twisted.ensureDeferred
async def test_stream_resume_reset_closed(running: Any) -> None:
    ids = [await publish(running, "c", i) for i in range(3)]
    resumed = await Collector.get(running.url + f"/channels/c/stream?since={ids[0]}")
    reset = await Collector.get(running.url + "/channels/c/stream?since=bogus")
    await resumed.count(b"\n", 2)
    await reset.contains(b"\n")
    await treq.delete(running.url + "/channels/c")
    await resumed.done
    await reset.done
    lines = [json.loads(line) for line in resumed.data.splitlines() if line]
    assert [(x["type"], x.get("id")) for x in lines] == [
        ("message", ids[1]),
        ("message", ids[2]),
        ("closed", None),
    ]
    lines = [json.loads(line) for line in reset.data.splitlines() if line]
    assert lines == [
        {"type": "reset", "channel": "c", "cursor": ids[-1]},
        {"type": "closed", "channel": "c"},
    ]


@pytest_twisted.ensureDeferred
async def test_stream_by_post_too(running: Any) -> None:
    stream = await Collector.get(running.url + "/channels/c/stream", method="POST")
    await subscribed(running, "c")
    mid = await publish(running, "c", 1)
    await stream.contains(mid.encode())


@pytest_twisted.ensureDeferred
async def test_stream_ends_cleanly_after_its_byte_budget(start_daemon: Any) -> None:
    def edit(s: Any) -> None:
        s.stream.max_bytes = 1000

    running = start_daemon(edit)
    stream = await Collector.get(running.url + "/channels/c/stream")
    await subscribed(running, "c")
    ids = [await publish(running, "c", "x" * 300) for _ in range(6)]
    await stream.done  # the response ended by itself
    got = [json.loads(line)["id"] for line in stream.data.splitlines() if line]
    assert got == ids[: len(got)] and 3 <= len(got) < 6
    assert running.broker.subscribers("c") == 0
    # The client resumes with its last id and misses nothing.
    code, page, _ = await get_json(running.url + f"/channels/c/poll?since={got[-1]}")
    assert [m["id"] for m in page["messages"]] == ids[len(got) :]


@pytest_twisted.ensureDeferred
async def test_plain_stream_ends_cleanly_after_its_byte_budget_in_live_messages(
    start_daemon: Any,
) -> None:
    """Without gzip, live messages come through the channel's group: its sweep keeps the budget."""

    def edit(s: Any) -> None:
        s.stream.max_bytes = 1000

    running = start_daemon(edit)
    raw = await RawHTTP.open(running.port, get_request("/channels/c/stream"))
    await raw.contains(b"\r\n\r\n")
    assert "content-encoding" not in split_response(raw.data)[1]
    await subscribed(running, "c")
    ids: list[str] = []
    for _ in range(6):  # one message per sweep, so the budget is passed by one message
        ids.append(await publish(running, "c", "x" * 300))
        await raw.until(lambda data, last=ids[-1].encode(): last in data or raw.ended)
    await raw.until(lambda _: raw.ended)  # the server ended the response
    chunks, finished = dechunk(split_response(raw.data)[2])
    assert finished  # with the last chunk: a clean end, not a drop
    got = [json.loads(line)["id"] for line in b"".join(chunks).splitlines() if line]
    assert got == ids[: len(got)] and 2 <= len(got) < 6
    assert running.broker.subscribers("c") == 0
    code, page, _ = await get_json(running.url + f"/channels/c/poll?since={got[-1]}")
    assert [m["id"] for m in page["messages"]] == ids[len(got) :]


# -- one sequence, four transports ------------------------------------------
@pytest_twisted.ensureDeferred
async def test_same_ids_in_the_same_order_through_all_four(running: Any) -> None:
    start = await publish(running, "seq", "start")
    sse = await Collector.get(running.url + f"/channels/seq/events?lastEventId={start}")
    stream = await Collector.get(running.url + f"/channels/seq/stream?since={start}")
    await subscribed(running, "seq", 2)
    ids = [await publish(running, "seq", {"i": i}) for i in range(20)]
    await sse.contains(ids[-1].encode() + b"\n")
    await stream.contains(ids[-1].encode())

    polled: list[str] = []
    cursor = start
    while len(polled) < 20:
        _, page, _ = await get_json(running.url + f"/channels/seq/poll?since={cursor}&limit=7")
        polled += [m["id"] for m in page["messages"]]
        cursor = page["cursor"]
    longpolled: list[str] = []
    cursor = start
    while len(longpolled) < 20:
        _, page, _ = await get_json(running.url + f"/channels/seq/longpoll?since={cursor}")
        longpolled += [m["id"] for m in page["messages"]]
        cursor = page["cursor"]

    via_sse = [e["id"] for e in parse_sse(sse.data.decode()) if "data" in e]
    via_stream = [json.loads(x)["id"] for x in stream.data.splitlines() if x]
    assert via_sse == via_stream == polled == longpolled == ids
