"""Every transport through a real nginx running the project's site file.

The test writes an nginx.conf of its own (prefix, pid, temp paths under
tmp_path; ``daemon off; master_process off;``) whose http block includes a
copy of ``etc/nginx/pushd.conf`` with only the upstream address and the
listen line substituted. nginx is ready once it logs its ``getrlimit``
notice (printed after it has bound its sockets). Each transport must deliver
a message within one second of publish, measured on the reactor clock.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.clients import RawHTTP, get_request, subscribed
from tests.test_ops_support import ROOT, Child, bounded, free_port, get, post, ws_frames, ws_open

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
SITE = ROOT / "etc/nginx/pushd.conf"


def site_for(upstream_port: int | list[int], listen_port: int) -> str:
    """The project's site file, pointed at this test's daemon(s) and port; nothing else changed."""
    text = SITE.read_text()
    ports = upstream_port if isinstance(upstream_port, list) else [upstream_port]
    servers = "\n    ".join(f"server 127.0.0.1:{p};" for p in ports)
    text, n_upstream = re.subn(r"server 127\.0\.0\.1:8080;", servers, text)
    text, n_listen = re.subn(r"listen 80;", f"listen 127.0.0.1:{listen_port};", text)
    assert (n_upstream, n_listen) == (1, 1), "etc/nginx/pushd.conf changed shape"
    return text


@pytest.fixture
def nginx(tmp_path: Path, running: Any) -> Any:
    yield from serve_through_nginx(tmp_path, running)


def serve_through_nginx(tmp_path: Path, running: Any) -> Any:
    """nginx with the project's site in front of ``running`` (a daemon, or a list of
    daemons as the upstream's nodes): yields (url, port)."""
    if NGINX is None:
        pytest.skip("nginx is not installed")
    port = free_port()
    (tmp_path / "logs").mkdir()
    nodes = running if isinstance(running, list) else [running]
    (tmp_path / "pushd-site.conf").write_text(site_for([n.port for n in nodes], port))
    temp = " ".join(f"{kind}_temp_path {tmp_path / kind};"
                    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(f"""
daemon off;
master_process off;
pid {tmp_path / "nginx.pid"};
error_log stderr notice;
events {{ worker_connections 256; }}
http {{
    access_log off;
    {temp}
    include {tmp_path / "pushd-site.conf"};
}}
""")
    child = Child()
    argv = [NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"]
    process = reactor.spawnProcess(child, NGINX, argv, env={}, path=str(tmp_path))
    pytest_twisted.blockon(child.wait_for(rb"getrlimit\(RLIMIT_NOFILE\)"))
    yield f"http://127.0.0.1:{port}", port
    if not child.exited.called:
        process.signalProcess(signal.SIGQUIT)  # graceful stop
    pytest_twisted.blockon(bounded(child.exited))


async def timed_publish(running: Any, channel: str, text: str) -> tuple[str, float]:
    started = reactor.seconds()
    message = await running.broker.publish(channel, text)
    return message.id, started


def within_a_second(started: float) -> None:
    took = reactor.seconds() - started
    assert took < 1.0, f"took {took:.3f}s through nginx"


@pytest_twisted.ensureDeferred
async def test_every_transport_delivers_through_nginx_within_a_second(
    running: Any, nginx: Any
) -> None:
    url, port = nginx
    code, headers, _ = await get(f"{url}/healthz")
    assert code == 200

    # SSE
    sse = await RawHTTP.open(port, get_request("/channels/n-sse/events"))
    await bounded(subscribed(running.broker, "n-sse"))
    await bounded(sse.contains(b"retry:"))  # headers and retry: passed through unbuffered
    mid, started = await timed_publish(running, "n-sse", "via nginx sse")
    await bounded(sse.contains(f"id: {mid}\ndata: via nginx sse\n\n".encode()))
    within_a_second(started)
    assert b"text/event-stream" in sse.data

    # HTTP stream
    stream = await RawHTTP.open(port, get_request("/channels/n-stream/stream"))
    await bounded(subscribed(running.broker, "n-stream"))
    mid, started = await timed_publish(running, "n-stream", "via nginx stream")
    await bounded(stream.contains(f'"id":"{mid}"'.encode()))
    within_a_second(started)
    assert b"application/x-ndjson" in stream.data

    # Long-poll, held until the message comes
    seed = await running.broker.publish("n-lp", "seed")
    longpoll = await RawHTTP.open(
        port, get_request(f"/channels/n-lp/longpoll?since={seed.id}&timeout=60")
    )
    await bounded(subscribed(running.broker, "n-lp"))
    mid, started = await timed_publish(running, "n-lp", "via nginx longpoll")
    await bounded(longpoll.contains(b"via nginx longpoll"))
    within_a_second(started)
    assert longpoll.data.startswith(b"HTTP/1.1 200")

    # WebSocket: the Upgrade goes through the map in the site file
    ws = await ws_open(port, "/channels/n-ws/ws")
    await bounded(subscribed(running.broker, "n-ws"))
    mid, started = await timed_publish(running, "n-ws", "via nginx ws")
    await bounded(ws.until(lambda d: any(mid.encode() in p for _, p in ws_frames(d))))
    within_a_second(started)
    [(opcode, payload)] = [f for f in ws_frames(ws.data) if mid.encode() in f[1]]
    assert opcode == 0x1 and json.loads(payload)["data"] == "via nginx ws"

    # Poll: asked right after the publish
    mid, started = await timed_publish(running, "n-poll", "via nginx poll")
    code, _, body = await get(f"{url}/channels/n-poll/poll")
    within_a_second(started)
    assert code == 200 and [m["id"] for m in json.loads(body)["messages"]] == [mid]

    # /metrics is not public through the site.
    code, _, _ = await get(f"{url}/metrics")
    assert code == 404
    for client in (sse, stream, longpoll, ws):
        client.close()


@pytest.fixture
def trusting(tmp_path: Path, start_daemon: Any) -> Any:
    """A daemon that believes the nginx on this machine, behind that nginx."""
    running = start_daemon(lambda s: setattr(s, "trusted_proxies", ["127.0.0.1", "::1"]))
    yield from serve_through_nginx(tmp_path, running)


async def post_status(url: str, body: bytes, *headers: str) -> int:
    from tests.clients import RawHTTP, split_response

    host, port = url.removeprefix("http://").split(":")
    lines = [
        "POST /channels/via-nginx HTTP/1.1", f"Host: {host}:{port}", "Connection: close",
        f"Content-Length: {len(body)}", *headers, "", "",
    ]
    raw = await RawHTTP.open(int(port), "\r\n".join(lines).encode() + body)
    data = await raw.contains(b"\r\n\r\n")
    raw.close()
    return int(split_response(data)[0].split()[1])


@pytest_twisted.ensureDeferred
async def test_publishing_through_nginx_needs_trusted_proxies(nginx: Any) -> None:
    url, _ = nginx
    # nginx names the client in X-Forwarded-For; a daemon that does not
    # trust it cannot tell a local client from a far one, and refuses
    assert await post_status(url, b"x") == 403


@pytest_twisted.ensureDeferred
async def test_a_trusted_nginx_passes_on_who_is_local(trusting: Any) -> None:
    url, _ = trusting
    assert await post_status(url, b"from this machine") == 201
    # a far client cannot pass as local by writing the header itself
    assert await post_status(url, b"spoofed", "X-Forwarded-For: 203.0.113.9") == 403


@pytest.fixture
def two_nodes(tmp_path: Path, start_daemon: Any, redis: Any) -> Any:
    """Two daemons on one redis-server, behind the site with both as its upstream."""

    def node(s: Any) -> None:
        s.broker = f"redis://127.0.0.1:{redis.port}/0"
        s.trusted_proxies = ["127.0.0.1"]

    nodes = [start_daemon(node), start_daemon(node)]
    site = serve_through_nginx(tmp_path, nodes)
    url, port = next(site)
    yield nodes, url, port
    for _ in site:
        pass


@pytest_twisted.ensureDeferred
async def test_nodes_on_one_redis_behind_nginx_resume_any_cursor(two_nodes: Any) -> None:
    """README "Scaling out": several nodes on one Redis behind the site's
    upstream; publishes land on either node and reach a stream on the other;
    when a node stops, its client comes back through nginx with its cursor
    and another node gives it what it missed."""
    from tests.clients import get_request

    nodes, url, port = two_nodes
    await bounded(nodes[0].daemon.ready())
    await bounded(nodes[1].daemon.ready())
    sse = await RawHTTP.open(port, get_request("/channels/scale/events"))
    await bounded(sse.contains(b"retry:"))
    ids = []
    for i in range(4):  # nginx takes turns: both nodes publish
        code, body = await post(f"{url}/channels/scale", b"m%d" % i)
        assert code == 201, body
        ids.append(json.loads(body)["id"])
    data = await bounded(sse.count(b"id: ", 4))
    assert [line[4:] for line in data.decode().split("\n") if line.startswith("id: ")] == ids
    # the node holding the stream stops; its client comes back with its cursor
    holder = next(n for n in nodes if n.registry.count("sse"))
    other = next(n for n in nodes if n is not holder)
    await bounded(holder.daemon.stopService())
    # the drained stream ends (nginx keeps the client's connection for another request)
    await bounded(sse.until(lambda data: data.endswith(b"\r\n0\r\n\r\n") or sse.ended))
    sse.close()
    missed = []
    for i in range(2):
        code, body = await post(f"{url}/channels/scale", b"late%d" % i)
        assert code == 201, body
        missed.append(json.loads(body)["id"])
    again = await RawHTTP.open(
        port, get_request("/channels/scale/events", f"Last-Event-ID: {ids[-1]}")
    )
    data = await bounded(again.count(b"id: ", 2))
    got = [line[4:] for line in data.decode().split("\n") if line.startswith("id: ")]
    assert got == missed and b"late0" in data and b"late1" in data
    assert other.registry.count("sse") == 1
    again.close()
