"""The load generator: one process, raw asyncio protocols on uvloop.

Run by :mod:`bench.run` as ``python -m bench.client SPEC_JSON``. It talks to
its parent over lines: it prints ``{"event": "ready", ...}`` once every
subscriber is connected, waits for ``go`` on stdin, publishes, prints
``{"event": "done", ...}`` once every subscriber has every message (or the
deadline passed), and exits on ``quit`` or end of input.

On a streaming connection (SSE, NDJSON, WebSocket) a read costs as little
as it can: the bytes and their arrival time are appended to a list and the
message starts in them counted (:class:`bench.proto.MarkCounter`), nothing
more. Parsing, the per-subscriber sequence check and the latency samples
come after the run (:func:`bench.proto.replay`), outside the measured
window, so the client stays cheaper per delivery than the servers it loads.
Polling clients parse as they go (they must, to send the next cursor).
Its own CPU use over the publish window is reported so that a run where the
client, not the server, was the limit can be flagged.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
import random
import resource
import sys
import time
from array import array
from typing import Any

from bench.proto import (
    BodyReader,
    MarkCounter,
    SeqScanner,
    SequenceChecker,
    make_body,
    parse_head,
    percentile,
    replay,
)

now_ns = time.monotonic_ns


class Stats:
    def __init__(self) -> None:
        self.latency = array("q")
        self.received = 0
        self.seen = 0  # message starts counted as they arrive (progress only)
        self.bytes_in = 0
        self.bytes_out = 0
        self.errors: list[str] = []
        self.last_delivery = 0.0
        # polling kinds: answers to poll / long-poll requests, and how many were 304
        self.answers = 0
        self.not_modified = 0


STATS = Stats()


def raise_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, want), hard) if hard != resource.RLIM_INFINITY else max(soft, want)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def resume_request(
    path: str, kind: str, resume: str, cursor: str | None, etag: str | None,
    last_modified: str | None,
) -> tuple[str, list[str]]:
    """The path and extra header lines of a poll or long-poll request that resumes.

    ``since`` (pushd): the cursor of the last answer as ``?since=``, and a
    poll also sends the last ETag back in ``If-None-Match`` (so nothing new
    is a ``304``). ``etag`` (Nchan): the last answer's ``Etag`` and
    ``Last-Modified`` go back as ``If-None-Match`` and ``If-Modified-Since``,
    which is how Nchan's long-poll and interval-poll walk a channel's queue.
    """
    lines = []
    if resume == "etag":
        if etag is not None:
            lines.append(f"If-None-Match: {etag}")
        if last_modified is not None:
            lines.append(f"If-Modified-Since: {last_modified}")
        return path, lines
    if cursor:
        path += ("&" if "?" in path else "?") + "since=" + cursor
    if kind == "poll" and etag is not None:
        lines.append(f"If-None-Match: {etag}")
    return path, lines


def get_request(spec: dict[str, Any], path: str, extra: list[str]) -> bytes:
    """A subscriber's GET: the server's own headers, ``extra``, a handshake for ``ws``."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {spec['host']}"]
    lines += spec.get("headers", [])
    lines += extra
    if spec["kind"] == "ws":
        key = base64.b64encode(os.urandom(16)).decode()
        lines += [
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def poll_delay(spec: dict[str, Any], status: int, polled: bool) -> float:
    """Seconds before a poll client asks again, after an answer with ``status``.

    The first wait is a random part of the interval, so a thousand clients
    that connected in one burst poll spread over the interval, not in step.
    A server whose answer holds one message at most (``one_per_answer``:
    Nchan's interval-poll) is asked again at once after a ``200``, since
    more may be waiting; otherwise the next poll comes one interval later.
    """
    interval = float(spec["poll_interval"])
    if not polled:
        return random.random() * interval
    if status == 200 and spec.get("one_per_answer"):
        return 0.0
    return interval


class Subscriber(asyncio.Protocol):
    """One subscriber connection; ``kind`` is how the bytes arrive."""

    def __init__(self, spec: dict[str, Any], channel: str, checker: SequenceChecker) -> None:
        self.spec = spec
        self.kind = spec["kind"]  # stream | ws | poll | longpoll
        self.channel = channel
        self.checker = checker
        self.scanner = SeqScanner()
        self.buf = b""
        self.head_done = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        # How a polling client resumes: "since" (pushd: ?since=CURSOR from the
        # JSON answer, and its ETag back in If-None-Match) or "etag" (Nchan:
        # the answer's Etag and Last-Modified back as If-None-Match and
        # If-Modified-Since; the body is the bare message).
        self.resume = spec.get("resume", "since")
        self.cursor: str | None = None
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.status = 0
        self.polled = False  # a poll client's first answer came in
        self.body: BodyReader | None = None
        self.closed = False
        # streaming kinds, after the head: (arrival_ns, bytes) per read
        self.raw = False
        self.recording: list[tuple[int, bytes]] = []
        self.marks = MarkCounter()
        self.go_index = 0  # reads before this one came before "go"

    # -- requests --------------------------------------------------------------
    def request(self) -> bytes:
        path = self.spec["path"].format(ch=self.channel)
        extra: list[str] = []
        if self.kind in ("poll", "longpoll"):
            path, extra = resume_request(path, self.kind, self.resume, self.cursor, self.etag,
                                         self.last_modified)
        return get_request(self.spec, path, extra)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        STATS.bytes_out += len(data)
        self.transport.write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send(self.request())
        if self.kind == "longpoll":
            self.ready.set_result(None)  # a held long-poll answers only with a message

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before ready: {exc}"))

    # -- bytes in ------------------------------------------------------------
    def _messages(self, data: bytes) -> None:
        found = self.scanner.feed(data)
        if found:
            now = now_ns() // 1000
            see = self.checker.see
            lat = STATS.latency.append
            for seq, t in found:
                see(seq)
                lat(now - t)
            STATS.received += len(found)
            STATS.seen += len(found)
            STATS.last_delivery = now

    def data_received(self, data: bytes) -> None:
        if self.raw:  # the hot path: record, count, nothing else
            self.recording.append((now_ns(), data))
            STATS.seen += self.marks.feed(data)
            return
        STATS.bytes_in += len(data)
        self.buf += data
        if not self.head_done:
            head = parse_head(self.buf)
            if head is None:
                return
            want = {101} if self.kind == "ws" else {200, 304} if self.kind == "poll" else {200}
            if head.status not in want:
                msg = f"{self.kind} {self.channel}: status {head.status}"
                STATS.errors.append(msg)
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError(msg))
                return
            self.head_done = True
            self.buf = self.buf[head.size :]
            if self.kind in ("poll", "longpoll"):
                self.body = BodyReader(head)
                self.status = head.status
                # Nchan's 304 repeats the position; pushd's carries its ETag
                self.etag = head.headers.get("etag", self.etag)
                self.last_modified = head.headers.get("last-modified", self.last_modified)
            elif not self.ready.done():
                self.ready.set_result(None)
            if self.kind in ("stream", "ws"):
                self.raw = True
                data, self.buf = self.buf, b""
                if data:
                    self.data_received(data)
                return
        self._answer()

    def analyse(self) -> int:
        """After the run: check the recorded messages and add their latencies.

        Returns how many WebSocket pings arrived (unanswered: the servers are
        configured not to send them, so any is reported).
        """
        found, pings = replay(self.recording, ws=self.kind == "ws")
        see = self.checker.see
        lat = STATS.latency.append
        for seq, sent_us, arrival_us in found:
            see(seq)
            lat(arrival_us - sent_us)
            if arrival_us > STATS.last_delivery:
                STATS.last_delivery = arrival_us
        STATS.received += len(found)
        STATS.bytes_in += sum(len(d) for _, d in self.recording[self.go_index :])
        return pings

    def _answer(self) -> None:
        assert self.body is not None
        done = self.body.feed(self.buf)
        self.buf = b""
        if done is None:
            return
        body, rest = done
        STATS.answers += 1
        if self.status == 304:
            STATS.not_modified += 1
        elif body:
            self._messages(body)
            if self.resume == "since":
                try:
                    cursor = json.loads(body).get("cursor")
                except ValueError:
                    cursor = None
                if cursor:
                    self.cursor = cursor
        self.head_done = False
        self.body = None
        self.buf = rest
        if not self.ready.done():
            self.ready.set_result(None)
        if self.closed:
            return
        if self.kind == "poll":
            delay = poll_delay(self.spec, self.status, self.polled)
            self.polled = True
            if delay:
                asyncio.get_running_loop().call_later(delay, self._again)
                return
        self._again()

    def _again(self) -> None:
        if not self.closed:
            self.send(self.request())


class Publisher(asyncio.Protocol):
    """POSTs on one keep-alive connection, pipelined, answers read in order."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.buf = b""
        self.head = None
        self.body: BodyReader | None = None
        self.answered = 0
        self.failed = 0
        self.waiters: list[asyncio.Future[None]] = []
        self.transport: asyncio.Transport | None = None
        self.first_status: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def post(self, channel: str, body: bytes) -> None:
        path = self.spec["publish_path"].format(ch=channel)
        req = (
            f"POST {path} HTTP/1.1\r\nHost: {self.spec['host']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        assert self.transport is not None
        self.transport.write(req)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.body is None:
                head = parse_head(self.buf)
                if head is None:
                    return
                if head.status >= 300:
                    self.failed += 1
                    if len(STATS.errors) < 20:
                        STATS.errors.append(f"publish: status {head.status}")
                self.body = BodyReader(head)
                self.buf = self.buf[head.size :]
            done = self.body.feed(self.buf)
            if done is None:
                self.buf = b""
                return
            self.buf = done[1]
            self.body = None
            self.answered += 1
            waiters, self.waiters = self.waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)

    def answer(self) -> asyncio.Future[None]:
        """A future for the next answer, registered now.

        Not a coroutine: ``wait_for(coroutine)`` registers its waiter only
        once its task first runs, and an answer read in between was missed,
        which left the publisher waiting out its 30 s timeout after the last
        answer (and the run's measured window open for as long).
        """
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        return fut


def plan(spec: dict[str, Any]) -> tuple[list[str], list[str], dict[str, list[int]] | None]:
    """(subscriber channels, channel of each message, expected seqs per channel)."""
    channels = spec["channels"]
    per = spec.get("subs_per_channel", 1)
    subs = [ch for ch in channels for _ in range(per)]
    m = spec["messages"]
    if len(channels) == 1:
        return subs, [channels[0]] * m, None
    rnd = random.Random(spec.get("seed", 1))
    targets = [rnd.choice(channels) for _ in range(m)]
    expected: dict[str, list[int]] = {ch: [] for ch in channels}
    for seq, ch in enumerate(targets, 1):
        expected[ch].append(seq)
    return subs, targets, expected


def local_address(transport: asyncio.BaseTransport | None) -> list[Any]:
    """``[ip, port]`` of this end of a connection (the server sees it as the peer)."""
    name = transport.get_extra_info("sockname") if transport is not None else None
    return [name[0], name[1]] if name else ["", 0]


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def user_s() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def connect_all(
    spec: dict[str, Any], subs: list[tuple[int, str]], expected: dict[str, list[int]] | None
) -> list[Subscriber]:
    """Open this process's subscribers; ``subs`` holds (global index, channel)."""
    loop = asyncio.get_running_loop()
    host, port = spec["host"].split(":")
    sem = asyncio.Semaphore(spec.get("connect_concurrency", 200))
    ips = spec.get("source_ips") or []
    per_ip = spec.get("per_source_ip", 20000)
    out: list[Subscriber] = []

    async def one(i: int, channel: str) -> None:
        checker = SequenceChecker(
            spec["messages"] if expected is None else 0,
            None if expected is None else expected[channel],
        )
        proto = Subscriber(spec, channel, checker)
        local = (ips[(i // per_ip) % len(ips)], 0) if ips and spec["total_subs"] > per_ip else None
        async with sem:
            await loop.create_connection(lambda: proto, host, int(port), local_addr=local)
            await asyncio.wait_for(proto.ready, 30)
        out.append(proto)

    await asyncio.gather(*(one(i, ch) for i, ch in subs))
    if spec["kind"] == "longpoll":
        await asyncio.sleep(0.5)  # a held long-poll answers nothing until a message
    return out


async def publish(spec: dict[str, Any], targets: list[str]) -> Publisher:
    loop = asyncio.get_running_loop()
    host, port = spec["host"].split(":")
    _, pub = await loop.create_connection(lambda: Publisher(spec), host, int(port))
    rate = spec.get("rate", 0)
    size = spec.get("size", 100)
    window = spec.get("pipeline", 4)
    start = loop.time()
    for seq, ch in enumerate(targets, 1):
        if rate:
            delay = start + (seq - 1) / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        else:
            while seq - 1 - pub.answered >= window:
                await pub.answer()
        pub.post(ch, make_body(seq, now_ns() // 1000, size))
    while pub.answered < len(targets):
        try:
            await asyncio.wait_for(pub.answer(), 30)
        except TimeoutError:
            break
    return pub


async def publishers(spec: dict[str, Any]) -> dict[str, Any]:
    """Mode ``publish``: POSTs on several keep-alive connections, one in flight on each.

    Message ``k`` (counted over every process) goes to channel ``k mod
    len(channels)``, so the channels are published to round-robin; this
    process sends the messages of its own connections (connection ``c`` of
    ``publishers`` belongs to process ``c mod shards``) and each connection
    sends its next POST as soon as the answer to the last one is in, so the
    server sets the pace. Nobody subscribes.
    """
    loop = asyncio.get_running_loop()
    host, port = spec["host"].split(":")
    channels = spec["channels"]
    shard, shards = spec.get("shard", [0, 1])
    conns = [c for c in range(spec["publishers"]) if c % shards == shard]
    total = spec["messages"]
    size = spec.get("size", 100)
    pubs = [(await loop.create_connection(lambda: Publisher(spec), host, int(port)))[1]
            for _ in conns]
    lat = array("q")
    ends: list[float] = []

    async def run(pub: Publisher, c: int) -> None:
        for k in range(c, total, spec["publishers"]):
            t0 = now_ns()
            pub.post(channels[k % len(channels)], make_body(k + 1, t0 // 1000, size))
            before = pub.answered
            while pub.answered == before:
                await pub.answer()
            lat.append((now_ns() - t0) // 1000)
        ends.append(now_ns() // 1000)

    emit({"event": "ready", "subscribers": 0, "connect_s": 0.0, "connect_cpu_s": 0.0})
    stdin = await stdin_reader()
    if (await stdin.readline()).strip() != b"go":
        return {}
    return await timed(spec, stdin, lambda: asyncio.gather(*(run(p, c) for p, c in zip(
        pubs, conns, strict=True))), lat, ends, lambda: {
        "published": sum(p.answered for p in pubs),
        "publish_failed": sum(p.failed for p in pubs),
        "expected": sum(len(range(c, total, spec["publishers"])) for c in conns),
    })


class Connector(asyncio.Protocol):
    """Mode ``connect``: one connection that asks, reads the response head, closes."""

    def __init__(self, request: bytes, want: int) -> None:
        self.request = request
        self.want = want
        self.buf = b""
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self.buf += data
        head = parse_head(self.buf)
        if head is not None:
            assert self.transport is not None
            self.transport.close()
            self.done.set_result(head.status)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(0)


async def connects(spec: dict[str, Any]) -> dict[str, Any]:
    """Mode ``connect``: ``messages`` connections in turn, ``connect_concurrency`` at once.

    Each one connects, sends the subscribe request (an SSE GET or a
    WebSocket handshake), waits for the response head (200, or 101 for a
    WebSocket), and closes: what a reconnect storm costs the server per
    client, less the messages. Source addresses rotate over ``source_ips``
    so that tens of thousands of closed connections in TIME_WAIT do not
    run one address out of ports.
    """
    loop = asyncio.get_running_loop()
    host, port = spec["host"].split(":")
    shard, shards = spec.get("shard", [0, 1])
    mine = range(shard, spec["messages"], shards)
    ips = spec.get("source_ips") or []
    want = 101 if spec["kind"] == "ws" else 200
    sem = asyncio.Semaphore(spec.get("connect_concurrency", 50))
    lat = array("q")
    ends: list[float] = []
    counts = {"connected": 0, "connect_failed": 0}
    path = spec["path"].format(ch=spec["channels"][0])

    async def one(i: int) -> None:
        proto = Connector(get_request(spec, path, []), want)
        local = (ips[i % len(ips)], 0) if ips else None
        async with sem:
            t0 = now_ns()
            try:
                await loop.create_connection(lambda: proto, host, int(port), local_addr=local)
                status = await asyncio.wait_for(proto.done, 30)
            except (OSError, TimeoutError) as e:
                status = 0
                if len(STATS.errors) < 20:
                    STATS.errors.append(f"connect: {e!r}")
            if status == want:
                counts["connected"] += 1
                lat.append((now_ns() - t0) // 1000)
            else:
                counts["connect_failed"] += 1
                if status and len(STATS.errors) < 20:
                    STATS.errors.append(f"connect: status {status}")
        ends.append(now_ns() // 1000)

    emit({"event": "ready", "subscribers": 0, "connect_s": 0.0, "connect_cpu_s": 0.0})
    stdin = await stdin_reader()
    if (await stdin.readline()).strip() != b"go":
        return {}
    return await timed(spec, stdin, lambda: asyncio.gather(*(one(i) for i in mine)), lat, ends,
                       lambda: {**counts, "expected": len(mine)})


async def stdin_reader() -> asyncio.StreamReader:
    """The parent's lines: ``go`` to start, then ``quit`` (or end of input) to exit."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def timed(
    spec: dict[str, Any], stdin: asyncio.StreamReader, work: Any, lat: array[int],
    ends: list[float], counts: Any,
) -> dict[str, Any]:
    """Run ``work()`` (a request mode's load) and report it as ``done``.

    The span runs from this process's start to its last answer; latency
    samples (request sent to answer, µs) also go to the latency file, so
    the parent can take percentiles over every process.
    """
    t_start = time.monotonic()
    c_start = cpu_s()
    u_start = user_s()
    start_us = now_ns() // 1000
    try:
        await asyncio.wait_for(work(), spec["timeout"])
    except TimeoutError:
        STATS.errors.append("timed out")
    wall = time.monotonic() - t_start
    cpu = cpu_s() - c_start
    last = max(ends) if ends else now_ns() // 1000
    if spec.get("latency_file"):
        with open(spec["latency_file"], "wb") as f:
            lat.tofile(f)
    ordered = sorted(lat)
    done = {
        "event": "done",
        "start_us": start_us,
        "last_delivery_us": last,
        "span_s": max(1e-6, (last - start_us) / 1e6),
        "wall_s": wall,
        "lat_p50_ms": percentile(ordered, 50) / 1000,
        "lat_p99_ms": percentile(ordered, 99) / 1000,
        "lat_max_ms": (ordered[-1] / 1000) if ordered else 0.0,
        "client_cpu_s": cpu,
        "client_user_s": user_s() - u_start,
        "client_util": cpu / wall if wall else 0.0,
        "errors": STATS.errors[:5],
        **counts(),
    }
    emit(done)
    await stdin.readline()  # "quit" or EOF
    return done


async def main(spec: dict[str, Any]) -> None:
    mode = spec.get("mode", "deliver")
    if mode in ("publish", "connect"):
        raise_nofile(spec.get("connect_concurrency", 50) + spec.get("publishers", 0) + 100)
        await (publishers if mode == "publish" else connects)(spec)
        return
    raise_nofile(len(spec["channels"]) * spec.get("subs_per_channel", 1) + 100)
    subs_channels, targets, expected = plan(spec)
    # With several load-generator processes each holds every n-th subscriber;
    # the first one also publishes.
    shard, shards = spec.get("shard", [0, 1])
    publisher = shard == 0
    spec["total_subs"] = len(subs_channels)
    mine = [(i, ch) for i, ch in enumerate(subs_channels) if i % shards == shard]
    t0 = time.monotonic()
    c0 = cpu_s()
    subs = await connect_all(spec, mine, expected)
    connect_s = time.monotonic() - t0
    emit({"event": "ready", "subscribers": len(subs), "connect_s": connect_s,
          "connect_cpu_s": cpu_s() - c0})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    line = await reader.readline()
    if line.strip() != b"go":
        return
    STATS.bytes_in = STATS.bytes_out = 0
    STATS.answers = STATS.not_modified = 0
    # Nothing on the read path makes reference cycles; a collector pass over
    # millions of recorded reads would only stall the reads (and the latency).
    gc.disable()
    for s in subs:
        s.go_index = len(s.recording)
    want = sum(s.checker.count() for s in subs)
    t_start = time.monotonic()
    c_start = cpu_s()
    u_start = user_s()
    start_us = now_ns() // 1000
    pub_task = asyncio.ensure_future(publish(spec, targets)) if publisher else None
    deadline = t_start + spec["timeout"]
    while time.monotonic() < deadline:
        if STATS.seen >= want and (pub_task is None or pub_task.done()):
            break
        await asyncio.sleep(0.02)
    else:
        STATS.errors.append(
            f"timed out: {STATS.seen} of {want} messages seen, publisher "
            + ("done" if pub_task is None or pub_task.done() else "not done"))
    wall = time.monotonic() - t_start
    cpu = cpu_s() - c_start
    user = user_s() - u_start
    gc.enable()
    pings = 0
    by_connection = []  # (local address, latency samples it added), in sample order
    for s in subs:
        before = len(STATS.latency)
        if s.raw:
            pings += s.analyse()
        if spec.get("conns_file"):
            by_connection.append([*local_address(s.transport), len(STATS.latency) - before])
    if pings:
        STATS.errors.append(f"{pings} unanswered WebSocket pings")
    pub = await pub_task if pub_task is not None and pub_task.done() else None
    if pub_task is not None and not pub_task.done():
        pub_task.cancel()
    if spec.get("latency_file"):
        with open(spec["latency_file"], "wb") as f:
            STATS.latency.tofile(f)
    if spec.get("conns_file"):
        # which samples came on which connection: the parent learns from /proc
        # which server process holds each one (cross-node latency)
        with open(spec["conns_file"], "w") as f:
            json.dump(by_connection, f)
    delivered = sum(s.checker.index - s.checker.gaps for s in subs)
    bad = [s for s in subs if not s.checker.ok]
    lat = sorted(STATS.latency)
    span_s = max(1e-6, (STATS.last_delivery - start_us) / 1e6)
    emit({
        "event": "done",
        "subscribers": len(subs),
        "messages": len(targets),
        "expected": want,
        "delivered": delivered,
        "received": STATS.received,
        "bad_subscribers": len(bad),
        "duplicates": sum(s.checker.duplicates for s in subs),
        "gaps": sum(s.checker.gaps for s in subs),
        "out_of_order": sum(s.checker.out_of_order for s in subs),
        "missing": sum(s.checker.missing() for s in subs),
        "published": pub.answered if pub else None,
        "publisher_addr": local_address(pub.transport) if pub else None,
        "publish_failed": pub.failed if pub else None,
        "wall_s": wall,
        "start_us": start_us,
        "last_delivery_us": STATS.last_delivery,
        "span_s": span_s,
        "deliveries_per_s": delivered / span_s,
        "lat_p50_ms": percentile(lat, 50) / 1000,
        "lat_p99_ms": percentile(lat, 99) / 1000,
        "lat_max_ms": (lat[-1] / 1000) if lat else 0.0,
        "bytes_in": STATS.bytes_in,
        "bytes_out": STATS.bytes_out,
        "answers": STATS.answers,
        "not_modified": STATS.not_modified,
        "client_cpu_s": cpu,
        "client_user_s": user,
        "client_util": cpu / wall if wall else 0.0,
        "errors": STATS.errors[:5],
    })
    await reader.readline()  # "quit" or EOF
    for s in subs:
        if s.transport is not None:
            s.transport.close()


def run(argv: list[str]) -> None:
    arg = argv[1]
    if arg.startswith("@"):
        with open(arg[1:]) as f:
            arg = f.read()
    spec = json.loads(arg)
    try:
        import uvloop
    except ImportError:  # still works, slower: the report says which loop ran
        uvloop = None
    if uvloop is not None:
        uvloop.run(main(spec))
    else:
        asyncio.run(main(spec))


if __name__ == "__main__":
    run(sys.argv)
