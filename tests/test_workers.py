"""``workers = N`` (DESIGN "Many processes"): real ``twistd -n pushd --workers 2``
processes on a real redis-server, one listening port shared by both.

Which process answered a connection is read from ``/metrics``
(``pushd_worker{worker,pid}``) on that keep-alive connection, which is then
reused for the request under test. Nothing sleeps: every wait is on the
processes' output, their exit, or bytes arriving, each with a deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from OpenSSL.crypto import FILETYPE_PEM
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone, ProcessTerminated
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from pushd.broker.memory import MemoryBroker
from pushd.config import Settings
from pushd.tap import Daemon
from pushd.workers import (
    BEAT,
    CONTROL_FD,
    FIRST_LISTEN_FD,
    GROUP_ENV,
    WORKER_ENV,
    ParentLink,
    Workers,
)
from tests.clients import RawHTTP, _RawProtocol, get_request, split_response
from tests.process import ROOT, TWISTD, Child, bounded, spawn_pushd, started_port, stop
from tests.redis_server import RedisServer, redis_server  # noqa: F401  (fixture)
from tests.test_ops_support import get, sample
from tests.test_ops_systemd import Datagrams

WORKER = re.compile(rb'pushd_worker\{pid="(?P<pid>\d+)",worker="(?P<worker>\d+)"\}')
DRAIN = 5.0  # the config's [drain] timeout


def config(redis: RedisServer, drain: float = DRAIN, extra: str = "") -> str:
    return (
        f'source = []\nbroker = "redis://127.0.0.1:{redis.port}/0"\n'
        f"[drain]\ntimeout = {drain}\n{extra}"
    )


def complete(data: bytes) -> bool:
    """A whole response with a Content-Length is in ``data``."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = split_response(data)[1].get("content-length")
    assert length is not None, head
    return len(body) >= int(length)


async def connection(port: int | str, tls: bool = False) -> tuple[RawHTTP, int, int]:
    """A keep-alive connection (to a port, or a unix socket's path), its answering
    worker's index and pid; data cleared."""
    if isinstance(port, str):
        client = RawHTTP()
        endpoint = UNIXClientEndpoint(reactor, port, timeout=5)
        client.protocol = await connectProtocol(endpoint, _RawProtocol(client))
        client.protocol.transport.write(get_request("/metrics"))
    else:
        client = await RawHTTP.open(port, get_request("/metrics"), tls=tls)
    data = await client.until(complete)
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    index = int(split_response(data)[1]["pushd-worker"])
    pids = {int(m["worker"]): int(m["pid"]) for m in WORKER.finditer(data)}
    assert index in pids, data
    client.metrics = split_response(data)[2]  # type: ignore[attr-defined]
    client.data = b""
    return client, index, pids[index]


async def one_per_worker(
    port: int | str, tries: int = 500, child: Child | None = None, tls: bool = False
) -> dict[int, tuple[RawHTTP, int]]:
    """Connections until both workers answered one: {index: (connection, pid)}."""
    found: dict[int, tuple[RawHTTP, int]] = {}
    for _ in range(tries):
        client, index, pid = await connection(port, tls)
        if index in found:
            client.close()
        else:
            found[index] = (client, pid)
        if len(found) == 2:
            return found
    log = child.log() if child is not None else ""
    raise AssertionError(f"{tries} connections all reached worker(s) {sorted(found)}\n{log}")


def parse(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def post_request(path: str, body: bytes, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def hold(client: RawHTTP, request: bytes) -> None:
    """Send ``request`` but its last 90 bytes, and wait until the server has its
    head (it answers ``100 Continue``): a request under way, not an idle connection."""
    client.protocol.transport.write(request[:-90])
    await bounded(client.contains(b"100 Continue\r\n\r\n"))
    client.data = b""


async def start(
    tmp_path: Path, redis: RedisServer, *args: str, drain: float = DRAIN, extra: str = "",
    **kw: Any,
) -> tuple[Child, Any, int]:
    child, process = spawn_pushd(
        tmp_path, "--workers", "2", "--listen", "tcp:0:interface=127.0.0.1", *args,
        config=config(redis, drain, extra), **kw,
    )
    port = await started_port(child)
    await child.wait_for(rb"pushd ready: .*\(2 workers\)")
    return child, process, port


def worker_pid(child: Child) -> int:
    return int(re.findall(rb"worker 1 started: pid (\d+)", child.output)[-1])


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may linger if nothing reaps it here)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def ended(pid: int, timeout: float = 5.0) -> None:
    """Poll ``/proc`` (a process not our child fires no event) until ``pid`` has ended.

    A worker closes its end of the output pipe a moment before the kernel
    counts it as exited, so this is awaited right after that pipe closed.
    """
    deadline = reactor.seconds() + timeout
    while running(pid):
        assert reactor.seconds() < deadline, f"pid {pid} still running after {timeout}s"
        await deferLater(reactor, 0.01)


def test_workers_come_from_the_file_and_the_command_line(tmp_path: Path) -> None:
    from pushd.tap import Options

    f = tmp_path / "p.toml"
    f.write_text('broker = "redis://127.0.0.1:6379/0"\nworkers = 2\n')
    o = Options()
    o.parseOptions(["--config", str(f)])
    assert o.settings.workers == 2
    o = Options()
    o.parseOptions(["--config", str(f), "--workers", "3"])
    assert o.settings.workers == 3
    assert o.argv == ["--config", str(f), "--workers", "3"]  # what the workers are given
    assert Settings().workers == 1
    # the README's command: no file, Redis and two workers from the command line
    o = Options()
    o.parseOptions(["--broker", "redis://127.0.0.1:6380/1", "--workers", "2"])
    assert (o.settings.broker, o.settings.workers) == ("redis://127.0.0.1:6380/1", 2)
    with pytest.raises(SystemExit, match="broker must be"):
        Options().parseOptions(["--broker", "mongodb://x"])


def test_more_than_one_worker_with_the_memory_broker_is_refused(tmp_path: Path) -> None:
    """One line on stderr, exit 1, nothing started."""
    result = subprocess.run(
        [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "pushd", "--workers", "2",
         "--listen", "tcp:0:interface=127.0.0.1"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        'pushd: workers = 2 needs the Redis broker (broker = "redis://..."): '
        "the memory broker's channels live in one process"
    ]


@pytest_twisted.ensureDeferred
async def test_both_workers_serve_the_one_port_and_share_channels(
    tmp_path: Path, redis_server: RedisServer  # noqa: F811
) -> None:
    """Connections reach both processes; a publish answered by one reaches an SSE
    stream served by the other, every message once, in order, with its id."""
    child, process, port = await start(tmp_path, redis_server)
    try:
        workers = await one_per_worker(port, child=child)
        assert workers[0][1] == process.pid  # worker 0 is the parent twistd started
        assert workers[1][1] == worker_pid(child) != process.pid
        # the worker's log lines, in the one output, say whose they are
        assert b"[worker 1 pushd.tap#info] worker 1 ready" in child.output, child.log()
        sse, _ = workers[1]
        publisher, _ = workers[0]

        async def publish(data: bytes) -> str:
            publisher.data = b""
            publisher.protocol.transport.write(post_request("/channels/spread", data))
            answer = await publisher.until(complete)
            assert answer.startswith(b"HTTP/1.1 201"), answer
            return str(json.loads(split_response(answer)[2])["id"])

        # The stream resumes after a message published through the other process
        # (a cursor: on Redis a cursor-less subscriber goes live only once its
        # node has read the channel's position, see the branch's report).
        first = await publish(b'"m0"')
        sse.protocol.transport.write(get_request(f"/channels/spread/events?since={first}"))
        await bounded(sse.contains(b"retry:"))
        assert sse.data.startswith(b"HTTP/1.1 200"), sse.data
        ids = [await publish(b'"m%d"' % n) for n in range(1, 4)]
        await bounded(sse.count(b"data: ", 3))
        events = re.findall(rb"id: (\S+)\r?\n(?:event: \S+\r?\n)?data: (\S+)", sse.data)
        assert events == [(i.encode(), b'"m%d"' % (n + 1)) for n, i in enumerate(ids)], sse.data
        for client, _ in workers.values():
            client.close()
    finally:
        stop(child, process)


@pytest_twisted.ensureDeferred
async def test_a_scrape_of_either_process_sees_both(
    tmp_path: Path, redis_server: RedisServer  # noqa: F811
) -> None:
    """Every sample carries its ``worker``; whichever process is scraped, the
    answer holds both processes' subscribers."""
    child, process, port = await start(tmp_path, redis_server)
    try:
        workers = await one_per_worker(port, child=child)
        for client, _ in workers.values():
            client.protocol.transport.write(get_request("/channels/scraped/events"))
            await bounded(client.contains(b"retry:"))
        scraped = set()
        while scraped != {0, 1}:  # one scrape answered by each process
            client, index, _ = await connection(port)
            client.close()
            if index in scraped:
                continue
            scraped.add(index)
            samples = parse(client.metrics)  # type: ignore[attr-defined]
            for worker in ("0", "1"):
                assert sample(samples, "pushd_connections", transport="sse", worker=worker) == 1
            assert sample(samples, "pushd_worker_restarts_total", worker="0") == 0
            assert not [key for key in samples if ("worker", "2") in key[1]]
            assert all(any(label == "worker" for label, _ in key[1]) for key in samples)
        for client, _ in workers.values():
            client.close()
    finally:
        stop(child, process)


@pytest_twisted.ensureDeferred
async def test_a_unix_listener_is_shared_too(
    tmp_path: Path, redis_server: RedisServer  # noqa: F811
) -> None:
    path = f"/tmp/pushd-workers-{os.getpid()}.sock"  # tmp_path may pass sun_path's 108 bytes
    child, process, _ = await start(
        tmp_path, redis_server, "--listen", f"unix:{path}", logger="pushd.logs.json_logger"
    )
    try:
        workers = await one_per_worker(path)
        assert sorted(workers) == [0, 1]
        lines = [json.loads(line) for line in child.output.splitlines() if line.startswith(b"{")]
        ready = [line for line in lines if line["message"] == "worker 1 ready"]
        assert len(ready) == 1 and ready[0]["worker"] == 1
        assert not [line for line in lines if "pushd ready" in line["message"] and "worker" in line]
        for client, _ in workers.values():
            client.close()
        process.signalProcess("TERM")
        assert await bounded(child.exited) == (0, None), child.log()
    finally:
        stop(child, process)
        if os.path.exists(path):
            os.unlink(path)


@pytest_twisted.ensureDeferred
async def test_a_tls_listener_is_shared_too(
    tmp_path: Path, redis_server: RedisServer  # noqa: F811
) -> None:
    """Each worker wraps the inherited socket in TLS with the same key and certificate."""
    key = ssl.KeyPair.generate(size=2048)
    pem = tmp_path / "server.pem"
    pem.write_bytes(key.dump(FILETYPE_PEM) + key.selfSignedCert(1, CN="localhost").dump(FILETYPE_PEM))
    child, process, _ = await start(
        tmp_path, redis_server, "--listen", f"ssl:0:privateKey={pem}:interface=127.0.0.1"
    )
    try:
        port = int((await child.wait_for(rb"\(TLS\) starting on (\d+)")).group(1))
        workers = await one_per_worker(port, child=child, tls=True)
        assert sorted(workers) == [0, 1]
        for client, _ in workers.values():
            client.close()
    finally:
        stop(child, process)


@pytest_twisted.ensureDeferred
async def test_a_killed_worker_is_started_again_and_the_port_keeps_answering(
    tmp_path: Path, redis_server: RedisServer  # noqa: F811
) -> None:
    child, process, port = await start(tmp_path, redis_server)
    try:
        old = worker_pid(child)
        os.kill(old, signal.SIGKILL)
        await child.wait_for(rb"worker 1 \(pid %d\) died \(signal 9\)" % old)
        for _ in range(5):  # the parent answers alone meanwhile
            client, index, _ = await connection(port)
            client.close()
        new = int((await child.wait_for(rb"worker 1 started: pid (?!%d\b)(\d+)" % old)).group(1))
        await child.wait_for(rb"worker 1 \(pid %d\) serving" % new)
        workers = await one_per_worker(port, child=child)
        assert workers[1][1] == new
        for client, _ in workers.values():
            client.close()
        assert not child.exited.called
    finally:
        stop(child, process)


@pytest_twisted.ensureDeferred
async def test_sigterm_on_the_parent_drains_every_worker_and_exits_0(
    tmp_path: Path, redis_server: RedisServer  # noqa: F811
) -> None:
    """Each process ends its SSE subscriber politely; all are gone within the drain
    timeout; the parent exits 0 after its worker did."""
    child, process, port = await start(tmp_path, redis_server)
    try:
        workers = await one_per_worker(port, child=child)
        for client, _ in workers.values():
            client.protocol.transport.write(get_request("/channels/bye/events"))
            await bounded(client.contains(b"retry:"))
        worker = worker_pid(child)
        began = reactor.seconds()
        process.signalProcess("TERM")
        assert await bounded(child.exited) == (0, None), child.log()
        assert reactor.seconds() - began < DRAIN
        for client, _ in workers.values():
            await bounded(client.until(lambda _, c=client: c.ended))
        assert re.search(rb"worker 1 \(pid %d\) exited: exit code 0" % worker, child.output)
        assert child.output.count(b"draining: ") == 2  # both drained, not killed
        assert b"killed" not in child.output
        assert b"starting it again" not in child.output  # no restart while stopping
        assert b"Traceback" not in child.output and b"Unhandled" not in child.output
        await ended(worker)
    finally:
        stop(child, process)


@pytest_twisted.ensureDeferred
async def test_a_second_sigterm_reaches_the_workers_too(
    tmp_path: Path, redis_server: RedisServer  # noqa: F811
) -> None:
    """A request body still on its way holds each process's drain (up to the
    body timeout, 50 s here); a second SIGTERM on the parent ends them all."""
    child, process, port = await start(
        tmp_path, redis_server, drain=60, extra="[http]\nbody_timeout = 50\n"
    )
    try:
        workers = await one_per_worker(port, child=child)
        for client, _ in workers.values():
            await hold(client, post_request("/channels/held", b"x" * 100, "Expect: 100-continue"))
        process.signalProcess("TERM")
        await child.wait_for(
            rb"draining: 0 subscriptions, 1 connections(.|\n)*draining: 0 subscriptions, 1 conn"
        )
        sent = reactor.seconds()
        process.signalProcess("TERM")
        assert await bounded(child.exited, 30) == (0, None), child.log()
        assert child.exit_time is not None and child.exit_time - sent < 10
        assert re.search(rb"\[worker 1 [^]]*\] second SIGTERM", child.output), child.log()
        assert b"killed" not in child.output
    finally:
        stop(child, process)


@pytest_twisted.ensureDeferred
async def test_sigterm_to_every_process_at_once_is_one_drain(
    tmp_path: Path, redis_server: RedisServer  # noqa: F811
) -> None:
    """As Ctrl-C in a terminal or ``KillMode=control-group`` do: the worker hears
    SIGTERM and its parent's request to drain, and still waits for its client
    (a second SIGTERM would have dropped it)."""
    child, process, port = await start(
        tmp_path, redis_server, drain=60, extra="[http]\nbody_timeout = 50\n"
    )
    try:
        workers = await one_per_worker(port, child=child)
        request = post_request("/channels/held", b'"' + b"x" * 98 + b'"', "Expect: 100-continue")
        for client, _ in workers.values():
            await hold(client, request)
        os.kill(worker_pid(child), signal.SIGTERM)
        process.signalProcess("TERM")
        await child.wait_for(
            rb"draining: 0 subscriptions, 1 connections(.|\n)*draining: 0 subscriptions, 1 conn"
        )
        for client, _ in workers.values():
            client.protocol.transport.write(request[-90:])
            answer = await bounded(client.until(complete))
            assert answer.startswith(b"HTTP/1.1 "), answer
            assert b"connection: close" in answer.lower()
        assert await bounded(child.exited) == (0, None), child.log()
        assert b"second SIGTERM" not in child.output
        assert re.search(rb"worker 1 \(pid \d+\) exited: exit code 0", child.output)
    finally:
        stop(child, process)


@pytest_twisted.ensureDeferred
async def test_workers_exit_when_the_parent_is_killed(
    tmp_path: Path, redis_server: RedisServer  # noqa: F811
) -> None:
    """A worker never serves orphaned: the parent's pipe closing makes it drain and exit.

    ``child.exited`` fires once the process has exited *and* every holder of
    its output pipe closed it, the worker included.
    """
    child, process, port = await start(tmp_path, redis_server)
    try:
        worker = worker_pid(child)
        process.signalProcess("KILL")
        await bounded(child.exited)
        assert b"worker 1: the parent process is gone; draining" in child.output
        await ended(worker)
    finally:
        stop(child, process)


@pytest_twisted.ensureDeferred
async def test_ready_is_sent_by_the_parent_once_every_worker_serves(
    tmp_path: Path, redis_server: RedisServer  # noqa: F811
) -> None:
    name = f"pushd-test-workers-notify-{os.getpid()}"
    datagrams = Datagrams()
    listening = reactor.listenUNIXDatagram("\0" + name, datagrams)
    child, process = spawn_pushd(
        tmp_path, "--workers", "2", "--listen", "tcp:0:interface=127.0.0.1",
        config=config(redis_server), env={"NOTIFY_SOCKET": "@" + name},
    )
    try:
        await datagrams.wait_for(b"READY=1")
        assert re.search(rb"worker 1 \(pid \d+\) serving", child.output), child.log()
        assert datagrams.lines().count(b"READY=1") == 1  # the worker tells no one
        assert f"MAINPID={process.pid}".encode() in datagrams.lines()
        process.signalProcess("TERM")
        assert await bounded(child.exited) == (0, None), child.log()
    finally:
        stop(child, process)
        await listening.stopListening()


# -- the parent's bookkeeping, on a fake clock ---------------------------------------
class SpawningClock(MemoryReactorClock):
    """A clock that records spawnProcess calls instead of starting anything."""

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, list[str], dict[str, str], dict[int, Any]]] = []

    def spawnProcess(self, proto: Any, executable: str, args: list[str], env: Any = None,
                     path: Any = None, childFDs: Any = None, **kw: Any) -> None:
        proto.makeConnection(FakeProcess(len(self.spawned) + 1000))
        self.spawned.append((proto, args, env, childFDs))


class FakeProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


def died(proto: Any, signum: int = 9) -> None:
    proto.processEnded(Failure(ProcessTerminated(signal=signum)))


def test_a_crash_loop_backs_off_and_a_steady_worker_restarts_at_once() -> None:
    clock = SpawningClock()
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1", "HOME": "/h"}
    workers = Workers(clock, 2, ["py", "twistd"], env, "/srv")
    ready = workers.start([7, 9])
    proto, args, child_env, fds = clock.spawned[0]
    # systemd's variables stay with the parent; the listening fds go to 4 and 5
    assert child_env == {"HOME": "/h", WORKER_ENV: "1", GROUP_ENV: str(os.getpid())}
    assert fds == {0: "w", 1: 1, 2: 2, CONTROL_FD: "r", FIRST_LISTEN_FD: 7, FIRST_LISTEN_FD + 1: 9}
    assert not ready.called
    proto.childDataReceived(CONTROL_FD, b"ready\n")
    assert ready.called
    waits = []
    for _ in range(8):  # dies at once, again and again
        before = len(clock.spawned)
        died(clock.spawned[-1][0])
        delay = workers.timers[1].getTime() - clock.seconds()
        waits.append(round(delay, 3))
        clock.advance(delay)
        assert len(clock.spawned) == before + 1
    assert waits == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    # one that served for a while and then died comes back after the first delay
    proto = clock.spawned[-1][0]
    proto.childDataReceived(CONTROL_FD, b"ready\n")
    clock.advance(Workers.STEADY)
    died(proto)
    assert workers.timers[1].getTime() - clock.seconds() == pytest.approx(0.2)
    assert workers.restarts == 9
    # stopping: the pending restart is cancelled and nothing is started again
    workers.terminate()
    assert not clock.getDelayedCalls()
    clock.advance(60)
    assert len(clock.spawned) == 9  # the first and eight restarts
    assert workers.gone().called


def test_stopping_tells_every_worker_and_waits_for_them() -> None:
    clock = SpawningClock()
    workers = Workers(clock, 3, ["py"], {}, None)
    workers.start([5])
    protos = [entry[0] for entry in clock.spawned]
    workers.terminate()  # asked on their stdin, not by signal (see ParentLink)
    assert [p.transport.written for p in protos] == [b"drain\n", b"drain\n"]
    workers.cut_short()
    assert [p.transport.written for p in protos] == [b"drain\nnow\n", b"drain\nnow\n"]
    gone = workers.gone()
    died(protos[0], 0)
    assert not gone.called
    workers.kill()  # the drain's deadline
    assert protos[1].transport.signals == ["KILL"]
    died(protos[1])
    assert gone.called
    assert len(clock.spawned) == 2  # no restart while stopping


@pytest_twisted.ensureDeferred
async def test_ready_waits_for_every_worker(tmp_path: Path) -> None:
    """The parent's READY=1 goes out only once its workers said they serve."""
    name = f"pushd-test-workers-ready-{os.getpid()}"
    datagrams = Datagrams()
    listening = reactor.listenUNIXDatagram("\0" + name, datagrams)
    settings = Settings()
    settings.listen = ["tcp:0:interface=127.0.0.1"]
    settings.sources = []
    daemon = Daemon(settings, reactor, {"NOTIFY_SOCKET": "@" + name}, broker_class=MemoryBroker)

    class Pool:  # the parent's Workers, answering when the test says
        started: Deferred[None] = Deferred()
        fds: list[int] = []
        restarts = 0

        def start(self, fds: list[int]) -> Deferred[None]:
            self.fds = fds
            return self.started

        def terminate(self) -> None:
            pass

        def kill(self) -> None:
            pass

        def gone(self) -> Deferred[None]:
            return succeed(None)

    pool = Pool()
    daemon.workers = pool  # type: ignore[assignment]
    daemon.startService()
    try:
        await bounded(daemon.ready())
        code, _, _ = await get(f"http://127.0.0.1:{daemon.listeners[0].port.getHost().port}/readyz")
        assert code == 200  # this process serves; /readyz is per process
        assert pool.fds == [daemon.listeners[0].port.fileno()]
        assert b"READY=1" not in datagrams.lines()
        pool.started.callback(None)
        await datagrams.wait_for(b"READY=1")
    finally:
        await daemon.stopService()
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_second_sigterm_while_the_listeners_close_still_ends_the_wait(
    start_daemon: Any,
) -> None:
    """A worker hears its parent's second SIGTERM a moment after the first: it
    may come while the listeners are closing, before the drain's wait began."""

    def edit(settings: Settings) -> None:
        settings.drain.timeout = 60.0
        settings.http.body_timeout = 50.0

    running = start_daemon(edit)
    holder = await RawHTTP.open(running.port, b"")  # a body on its way holds the drain
    await hold(holder, post_request("/channels/held", b"x" * 100, "Expect: 100-continue"))
    began = reactor.seconds()
    stopping = running.daemon.stopService()
    assert running.daemon.registry.draining and running.daemon._drain_done is None
    running.daemon.terminate()  # the second SIGTERM, in that window
    await bounded(stopping, 30)
    assert reactor.seconds() - began < 5


def test_a_serving_worker_that_falls_silent_is_killed_and_started_again() -> None:
    """The parent is the workers' watchdog: each says ``alive`` every BEAT
    seconds from its event loop; one silent for SILENT seconds hangs."""
    clock = SpawningClock()
    workers = Workers(clock, 3, ["py"], {}, None)
    workers.start([5])
    first, second = (entry[0] for entry in clock.spawned)
    for proto in (first, second):
        proto.childDataReceived(CONTROL_FD, b"ready\n")
    for _ in range(10):  # both alive for a while: nothing happens
        clock.advance(BEAT)
        for proto in (first, second):
            proto.childDataReceived(CONTROL_FD, b"alive\n")
    assert first.transport.signals == second.transport.signals == []
    for _ in range(4):  # the first hangs; the second keeps saying it is alive
        clock.advance(BEAT)
        second.childDataReceived(CONTROL_FD, b"alive\n")
    assert first.transport.signals == []  # silent for SILENT exactly: not yet
    clock.advance(BEAT)
    assert first.transport.signals == ["KILL"] and second.transport.signals == []
    clock.advance(BEAT)
    assert first.transport.signals == ["KILL"]  # once
    died(first)
    clock.advance(Workers.FIRST_DELAY)
    assert len(clock.spawned) == 3  # started again, as after a crash
    # a worker still starting is not judged: it has not served yet
    clock.advance(10 * BEAT)
    assert clock.spawned[-1][0].transport.signals == []
    workers.terminate()
    assert not clock.getDelayedCalls()


def test_a_worker_says_alive_from_its_event_loop_once_it_serves() -> None:
    clock = Clock()
    link = ParentLink(lambda word: None, clock)
    out = StringTransport()
    link.makeConnection(out)
    clock.advance(3 * BEAT)
    assert out.value() == b""  # not before it serves
    link.ready()
    clock.advance(BEAT)
    clock.advance(BEAT)
    assert out.value() == b"ready\nalive\nalive\n"
    link.connectionLost(Failure(ConnectionDone()))
    assert not clock.getDelayedCalls()


def test_sources_run_once_per_host_in_the_parent() -> None:
    """A worker running the sources too would publish each tick, line or
    command output once per process."""
    from pushd.sources.base import Source
    from pushd.sources.status import StatusSource

    settings = Settings()  # the demo ticker, and the /status page's source
    assert settings.sources and settings.web.demo
    parent = Daemon(settings, MemoryReactorClock(), {})
    worker = Daemon(settings, MemoryReactorClock(), {WORKER_ENV: "1"})
    assert len(parent.sources) == len(settings.sources)
    assert any(isinstance(s, StatusSource) for s in parent)
    assert worker.sources == []
    assert not any(isinstance(s, (Source, StatusSource)) for s in worker)
