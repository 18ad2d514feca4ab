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
from tests.test_ops_support import ROOT, Child, bounded, free_port, get, ws_frames, ws_open

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
SITE = ROOT / "etc/nginx/pushd.conf"


def site_for(upstream_port: int, listen_port: int) -> str:
    """The project's site file, pointed at this test's daemon and port; nothing else changed."""
    text = SITE.read_text()
    text, n_upstream = re.subn(r"server 127\.0\.0\.1:8080;", f"server 127.0.0.1:{upstream_port};",
                               text)
    text, n_listen = re.subn(r"listen 80;", f"listen 127.0.0.1:{listen_port};", text)
    assert (n_upstream, n_listen) == (1, 1), "etc/nginx/pushd.conf changed shape"
    return text


@pytest.fixture
def nginx(tmp_path: Path, running: Any) -> Any:
    yield from serve_through_nginx(tmp_path, running)


def serve_through_nginx(tmp_path: Path, running: Any) -> Any:
    """nginx with the project's site in front of ``running``: yields (url, port)."""
    if NGINX is None:
        pytest.skip("nginx is not installed")
    port = free_port()
    (tmp_path / "logs").mkdir()
    (tmp_path / "pushd-site.conf").write_text(site_for(running.port, port))
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


async def post(url: str, body: bytes, *headers: str) -> int:
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
    assert await post(url, b"x") == 403


@pytest_twisted.ensureDeferred
async def test_a_trusted_nginx_passes_on_who_is_local(trusting: Any) -> None:
    url, _ = trusting
    assert await post(url, b"from this machine") == 201
    # a far client cannot pass as local by writing the header itself
    assert await post(url, b"spoofed", "X-Forwarded-For: 203.0.113.9") == 403
