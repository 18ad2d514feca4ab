"""What the browser tests run against: a pushd process, test-page servers, a proxy.

Everything binds 127.0.0.1 and port 0, runs in threads or a child process
the fixtures own, and stops when they end. Nothing here sleeps: waiting is
done in the page, with Playwright's ``wait_for_function``.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import queue
import select
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
STARTUP_TIMEOUT = 20.0

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class PushdProcess:
    """``python -m tests.browser.serve`` with a config file; knows its URLs."""

    def __init__(self, config: str, tmp: Path) -> None:
        path = tmp / "pushd.toml"
        path.write_text(config)
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.browser.serve",
                "--config",
                str(path),
                "--listen",
                "tcp:0:interface=127.0.0.1",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(lines,), daemon=True).start()
        while True:
            try:
                line = lines.get(timeout=STARTUP_TIMEOUT)
            except queue.Empty:
                self.stop()
                raise RuntimeError("pushd did not start:\n" + self.log()) from None
            if line is None:
                raise RuntimeError("pushd exited:\n" + self.log())
            if "PUSHD-TEST " in line:
                urls = json.loads(line.split("PUSHD-TEST ", 1)[1])
                self.url: str = urls["url"]
                self.control: str = urls["control"]
                self.port = int(self.url.rsplit(":", 1)[1])
                return

    def _read(self, lines: queue.Queue[str | None]) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            lines.put(line)
        lines.put(None)

    def log(self) -> str:
        return "".join(self.output[-200:])

    def drop(self) -> dict[str, int]:
        """Abort every subscriber's connection; how many per transport."""
        return post_json(self.control + "/drop", b"")  # type: ignore[no-any-return]

    def publish(self, channel: str, data: Any, event: str | None = None) -> str:
        url = f"{self.url}/channels/{channel}" + (f"?event={event}" if event else "")
        return post_json(url, json.dumps(data).encode(), "application/json")["id"]  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def post_json(url: str, body: bytes, content_type: str = "application/octet-stream") -> Any:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": content_type}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


# -- a second origin: the test page served by a plain HTTP server ---------------
class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def page_server() -> Any:
    """Serves tests/browser on a port of its own; yields its origin."""
    handler = functools.partial(_Quiet, directory=str(HERE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# -- a proxy that refuses WebSocket upgrades --------------------------------------
class _ProxyHandler(socketserver.BaseRequestHandler):
    server: RefusingProxy

    def handle(self) -> None:
        client: socket.socket = self.request
        head = b""
        while b"\r\n\r\n" not in head:
            data = client.recv(65536)
            if not data:
                return
            head += data
        if b"\r\nupgrade: websocket" in head.lower():
            self.server.refused += 1
            client.sendall(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            return
        upstream = socket.create_connection(("127.0.0.1", self.server.upstream_port))
        try:
            upstream.sendall(head)
            _pipe(client, upstream)
        finally:
            upstream.close()


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    peers = {a: b, b: a}
    while True:
        readable, _, _ = select.select([a, b], [], [], 60)
        if not readable:
            return
        for s in readable:
            try:
                data = s.recv(65536)
            except OSError:
                return
            if not data:
                return
            peers[s].sendall(data)


class RefusingProxy(socketserver.ThreadingTCPServer):
    """Forwards HTTP to pushd but answers every WebSocket upgrade with 403."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream_port = upstream_port
        self.refused = 0
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
