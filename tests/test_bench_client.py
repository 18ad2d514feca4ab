"""The load generator's request-path clients (bench.client): the bytes they send.

A poll or long-poll client must resume the way each server documents it,
or the benchmark measures a client that re-reads or skips messages: pushd
with ``?since=`` and its ETag back in ``If-None-Match``, Nchan with the
last answer's ``Etag`` and ``Last-Modified`` back as ``If-None-Match`` and
``If-Modified-Since``. The protocols run over a transport that records
what is written, in a real asyncio loop; no socket is opened.
"""

from __future__ import annotations

import asyncio
from array import array
from pathlib import Path
from typing import Any

import pytest

from bench import client
from bench.client import Connector, Stats, Subscriber, poll_delay, resume_request
from bench.proto import SequenceChecker, make_body
from bench.run import merge_requests


class Recorder:
    """The part of an asyncio transport the clients use: writes kept, close noted."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


def in_loop(fn: Any) -> Any:
    """Run ``fn`` inside a fresh asyncio loop (the protocols need a running one)."""
    loop = asyncio.new_event_loop()

    async def body() -> Any:
        return fn()

    try:
        return loop.run_until_complete(body())
    finally:
        loop.close()


@pytest.fixture(autouse=True)
def stats(monkeypatch: pytest.MonkeyPatch) -> Stats:
    fresh = Stats()
    monkeypatch.setattr(client, "STATS", fresh)
    return fresh


def lines(request: bytes) -> list[str]:
    return request.decode().split("\r\n")


def answer(status: str, headers: list[str], body: bytes = b"") -> bytes:
    head = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


NCHAN_POLL = {"host": "127.0.0.1:1", "kind": "poll", "path": "/ip?id={ch}", "resume": "etag",
              "one_per_answer": True, "poll_interval": 1.0, "messages": 2}


def test_nchan_interval_poll_walks_the_queue_by_etag_and_last_modified(stats: Stats) -> None:
    def run() -> tuple[list[bytes], Subscriber]:
        sub = Subscriber(NCHAN_POLL, "c1", SequenceChecker(2))
        t = Recorder()
        sub.connection_made(t)  # type: ignore[arg-type]
        # nothing published yet: 304, which already names the queue's position
        sub.data_received(answer("304 Not Modified", [
            "Last-Modified: Wed, 02 Dec 2026 19:32:39 GMT", "Etag: 0"]))
        assert len(t.written) == 1  # the next poll waits for its turn
        sub._again()
        # a message: one per answer, so the client asks again at once
        sub.data_received(answer("200 OK", [
            "Last-Modified: Wed, 02 Dec 2026 19:32:40 GMT", "Etag: 1"], make_body(1, 5)))
        return t.written, sub

    written, sub = in_loop(run)
    assert len(written) == 3
    first = lines(written[0])
    assert first[0] == "GET /ip?id=c1 HTTP/1.1"
    assert not [h for h in first if h.startswith("If-")]  # oldest buffered message first
    assert lines(written[1])[2:4] == [
        "If-None-Match: 0", "If-Modified-Since: Wed, 02 Dec 2026 19:32:39 GMT"]
    assert lines(written[2])[0] == "GET /ip?id=c1 HTTP/1.1"  # no pushd cursor in the path
    assert lines(written[2])[2:4] == [
        "If-None-Match: 1", "If-Modified-Since: Wed, 02 Dec 2026 19:32:40 GMT"]
    assert (stats.answers, stats.not_modified, stats.received) == (2, 1, 1)
    assert sub.checker.index == 1 and sub.ready.done()


PUSHD_POLL = {"host": "127.0.0.1:1", "kind": "poll", "path": "/channels/{ch}/poll",
              "poll_interval": 1.0, "messages": 1}


def test_pushd_poll_resumes_by_cursor_and_sends_its_etag_back(stats: Stats) -> None:
    def run() -> list[bytes]:
        sub = Subscriber(PUSHD_POLL, "c1", SequenceChecker(1))
        t = Recorder()
        sub.connection_made(t)  # type: ignore[arg-type]
        sub.data_received(answer("200 OK", ['ETag: ""'], b'{"messages": [], "cursor": null}'))
        sub._again()
        body = b'{"messages": [{"id": "e-1", "data": %s}], "cursor": "e-1"}' % make_body(1, 5)
        # the head and the body in two reads
        whole = answer("200 OK", ['ETag: "e-1"'], body)
        sub.data_received(whole[:40])
        sub.data_received(whole[40:])
        assert len(t.written) == 2  # pushd's answer holds everything new: wait a turn
        sub._again()
        sub.data_received(answer("304 Not Modified", ['ETag: "e-1"']))
        sub._again()
        return t.written

    written = in_loop(run)
    assert lines(written[0])[0] == "GET /channels/c1/poll HTTP/1.1"
    assert not [h for h in lines(written[0]) if h.startswith("If-")]
    assert lines(written[1])[0] == "GET /channels/c1/poll HTTP/1.1"  # no cursor yet
    assert 'If-None-Match: ""' in lines(written[1])
    for later in written[2:]:  # the 304 keeps the cursor
        assert lines(later)[0] == "GET /channels/c1/poll?since=e-1 HTTP/1.1"
        assert 'If-None-Match: "e-1"' in lines(later)
        assert not [h for h in lines(later) if h.startswith("If-Modified-Since")]
    assert (stats.answers, stats.not_modified, stats.received) == (3, 1, 1)


def test_a_poll_client_takes_a_304_but_a_long_poll_client_does_not(stats: Stats) -> None:
    spec = {**PUSHD_POLL, "kind": "longpoll", "path": "/channels/{ch}/longpoll?timeout=60"}

    def run() -> Subscriber:
        sub = Subscriber(spec, "c1", SequenceChecker(1))
        sub.connection_made(Recorder())  # type: ignore[arg-type]
        sub.data_received(answer("304 Not Modified", []))
        return sub

    in_loop(run)
    assert stats.errors == ["longpoll c1: status 304"]


def test_resume_request_for_each_server_and_kind() -> None:
    assert resume_request("/channels/c/longpoll?timeout=60", "longpoll", "since", "e-7", '"e-7"',
                          None) == ("/channels/c/longpoll?timeout=60&since=e-7", [])
    assert resume_request("/channels/c/poll", "poll", "since", None, None, None) == (
        "/channels/c/poll", [])
    assert resume_request("/lp?id=c", "longpoll", "etag", None, "3", "Thu, 01 Jan 1970") == (
        "/lp?id=c", ["If-None-Match: 3", "If-Modified-Since: Thu, 01 Jan 1970"])


def test_poll_delay_spreads_the_first_poll_and_drains_one_message_answers() -> None:
    nchan = {"poll_interval": 2.0, "one_per_answer": True}
    pushd = {"poll_interval": 2.0}
    firsts = [poll_delay(pushd, 200, polled=False) for _ in range(200)]
    assert all(0 <= d < 2.0 for d in firsts) and max(firsts) - min(firsts) > 1.0
    assert poll_delay(nchan, 200, polled=True) == 0.0
    assert poll_delay(nchan, 304, polled=True) == 2.0
    assert poll_delay(pushd, 200, polled=True) == 2.0


def test_a_connector_sends_the_handshake_reads_the_head_and_closes() -> None:
    spec = {"host": "127.0.0.1:1", "kind": "ws"}

    def run() -> tuple[Recorder, Connector]:
        proto = Connector(client.get_request(spec, "/sub?id=c", []), 101)
        t = Recorder()
        proto.connection_made(t)  # type: ignore[arg-type]
        proto.data_received(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n")
        assert not t.closed and not proto.done.done()
        proto.data_received(b"Connection: Upgrade\r\n\r\n\x81\x02hi")
        proto.data_received(b"more")  # read after the close: ignored
        return t, proto

    t, proto = in_loop(run)
    head = lines(t.written[0])
    assert head[0] == "GET /sub?id=c HTTP/1.1"
    assert "Upgrade: websocket" in head and "Sec-WebSocket-Version: 13" in head
    assert t.closed and proto.done.result() == 101


def test_a_connection_lost_before_its_head_counts_as_failed() -> None:
    def run() -> int:
        proto = Connector(b"GET / HTTP/1.1\r\n\r\n", 200)
        proto.connection_made(Recorder())  # type: ignore[arg-type]
        proto.data_received(b"HTTP/1.1 200 OK\r\n")
        proto.connection_lost(ConnectionResetError())
        return proto.done.result()

    assert in_loop(run) == 0


def test_merge_requests_adds_counts_and_spans_every_process(tmp_path: Path) -> None:
    def done(published: int, start: int, last: int, util: float) -> dict[str, Any]:
        return {"published": published, "publish_failed": 1, "expected": published,
                "start_us": start, "last_delivery_us": last, "wall_s": 1.5,
                "client_util": util, "client_cpu_s": 0.5, "client_user_s": 0.4,
                "errors": [f"e{published}"]}

    files = []
    for i, values in enumerate(([100, 300], [200, 400, 9000])):
        path = tmp_path / f"lat-{i}.bin"
        path.write_bytes(array("q", values).tobytes())
        files.append(path)
    out = merge_requests([done(4, 2_000_000, 3_000_000, 0.3),
                          done(6, 1_500_000, 3_500_000, 0.6)], files)
    assert (out["published"], out["publish_failed"], out["expected"]) == (10, 2, 10)
    assert out["span_s"] == 2.0  # earliest start to the last answer anywhere
    assert out["lat_p50_ms"] == 0.3 and out["lat_max_ms"] == 9.0
    assert out["client_util"] == 0.6 and out["errors"] == ["e4", "e6"]
