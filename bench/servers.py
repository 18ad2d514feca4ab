"""The servers under test, each started on a loopback port and stopped by pid.

Every server gets a fresh temporary directory for its config, logs and
(nginx) temp files; nothing outside it is written. Each one describes how a
client reaches it per transport (``paths``); a transport it does not serve
is absent, and the report says "n/a".
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.procstat import tree

ROOT = Path(__file__).resolve().parent.parent
NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _raise_nofile() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _http_ok(port: int, path: str) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            s.sendall(head.encode())
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


class Redis:
    """A redis-server of the bench's own on a free port, for one measurement.

    No persistence (``--save ""``, no AOF): the figures are the broker's
    work, not the disk's. Its output goes to ``redis.log`` in the server's
    directory, so a failed start shows in the server's log tail.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        log = open(self.dir / "redis.log", "wb")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(self.dir)],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=_raise_nofile,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited: "
                                   + (self.dir / "redis.log").read_text(errors="replace")[-800:])
            if _redis_pong(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not answer PING")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _redis_pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class Server:
    name = "?"
    health = "/healthz"
    # transport -> {"kind", "path", "headers"}; publish path
    paths: dict[str, dict[str, Any]] = {}
    publish_path = ""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        #: processes that serve clients (pushd's parent and workers, nginx's workers)
        self.workers = 1
        #: the redis-server this server runs on, started and stopped with it
        self.redis: Redis | None = None

    @property
    def sidecars(self) -> dict[str, int]:
        """Processes outside the server's own tree whose CPU is measured apart."""
        return {"redis": self.redis.pid} if self.redis is not None and self.redis.proc else {}

    def all_serving(self) -> bool:
        """Every one of ``workers`` processes serves (after /healthz answered)."""
        return True

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str] | None:
        return None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        if self.redis is not None:
            self.redis.start()
        log = open(self.dir / "stdout.log", "wb")
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
            preexec_fn=_raise_nofile, env=self.env(),
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_tail()}")
            if _http_ok(self.port, self.health) and self.all_serving():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer {self.health}"
                           f"{' on every worker' if self.workers > 1 else ''}: {self.log_tail()}")

    def log_tail(self) -> str:
        text = ""
        for f in self.dir.glob("*.log"):
            text += f.read_text(errors="replace")[-800:]
        return text

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.redis is not None:
            self.redis.stop()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Pushd(Server):
    name = "pushd"
    publish_path = "/channels/{ch}"
    paths = {
        "sse": {"kind": "stream", "path": "/channels/{ch}/events"},
        "stream": {"kind": "stream", "path": "/channels/{ch}/stream"},
        "ws": {"kind": "ws", "path": "/channels/{ch}/ws"},
        "longpoll": {"kind": "longpoll", "path": "/channels/{ch}/longpoll?timeout=60"},
        "poll": {"kind": "poll", "path": "/channels/{ch}/poll"},
    }

    #: a directory holding the ``pushd`` package to run instead of this
    #: checkout's (e.g. ``git archive`` of a commit, for before/after runs)
    source: str | None = None

    def __init__(self, python: str | None = None, label: str = "pushd", workers: int = 1,
                 redis: bool = False) -> None:
        """``redis``: on a redis-server of its own (``broker = "redis://..."``);
        ``workers``: that many processes sharing the listener (needs ``redis``)."""
        self.name = label
        super().__init__()
        self.python = python or sys.executable
        self.workers = workers
        if redis:
            self.redis = Redis(self.dir)

    def all_serving(self) -> bool:
        # the parent says so once every worker has told it that it serves
        return self.workers == 1 or (
            f"({self.workers} workers)" in (self.dir / "pushd.log").read_text(errors="replace"))

    def env(self) -> dict[str, str] | None:
        if not self.source:
            return None
        return {**os.environ, "PYTHONPATH": self.source}

    def command(self) -> list[str]:
        cfg = self.dir / "pushd.toml"
        top = ""
        if self.redis is not None:
            top += f'broker = "{self.redis.url}"\n'
        if self.workers > 1:
            top += f"workers = {self.workers}\n"
        cfg.write_text(
            top
            + "source = []\n"
            "[history]\nsize = 1000\n"
            "[stream]\nmax_bytes = 1073741824\n"
            "[web]\ndemo = false\n"
            # The load generator does not answer pings (it only records what
            # arrives); Nchan sends none by default either.
            "[websocket]\nping_interval = 0\n"
        )
        listen = f"tcp:{self.port}:interface=127.0.0.1:backlog=4096"
        return [
            str(Path(self.python).parent / "twistd"), "-n", "--pidfile=",
            f"--logfile={self.dir / 'pushd.log'}",
            "pushd", "--config", str(cfg), "--listen", listen,
        ]


class Nchan(Server):
    name = "nchan"
    publish_path = "/pub?id={ch}"
    paths = {
        "sse": {"kind": "stream", "path": "/sub?id={ch}", "headers": ["Accept: text/event-stream"]},
        "stream": {"kind": "stream", "path": "/sub?id={ch}", "headers": ["TE: chunked"]},
        "ws": {"kind": "ws", "path": "/sub?id={ch}"},
        # resumed with the last answer's Etag and Last-Modified; one message per answer
        "longpoll": {"kind": "longpoll", "path": "/lp?id={ch}", "resume": "etag"},
        "poll": {"kind": "poll", "path": "/ip?id={ch}", "resume": "etag",
                 "one_per_answer": True},
    }

    def __init__(self, workers: int = 1) -> None:
        super().__init__()
        self.workers = workers

    def all_serving(self) -> bool:
        return len(tree(self.pid)) > self.workers  # the master and its workers

    def command(self) -> list[str]:
        d = self.dir
        user = "user root;\n" if os.geteuid() == 0 else ""
        # With one shared listening socket one idle worker takes every new
        # connection (EPOLLEXCLUSIVE, multi_accept): a socket per worker lets the
        # kernel spread them, as pushd's workers spread theirs.
        reuseport = " reuseport" if self.workers > 1 else ""
        (d / "nginx.conf").write_text(f"""
load_module {NCHAN_MODULE};
{user}worker_processes {self.workers};
worker_rlimit_nofile 19000;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 18000; use epoll; multi_accept on; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  nchan_max_reserved_memory 256M;
  server {{
    listen 127.0.0.1:{self.port} backlog=4096{reuseport};
    location = /healthz {{ return 200 "ok"; }}
    location = /pub {{
      nchan_publisher;
      nchan_channel_id $arg_id;
      nchan_message_buffer_length 1000;
      nchan_message_timeout 1h;
    }}
    location = /sub {{
      nchan_subscriber;
      nchan_channel_id $arg_id;
      nchan_subscriber_first_message newest;
      nchan_message_buffer_length 1000;
    }}
    location = /lp {{
      nchan_subscriber longpoll;
      nchan_channel_id $arg_id;
      nchan_subscriber_first_message newest;
      nchan_message_buffer_length 1000;
    }}
    # Interval-poll answers 304 at once when nothing is new. A first poll
    # without If-None-Match starts at the oldest buffered message: with
    # "newest" every such poll would wait for a later one and never get it.
    location = /ip {{
      nchan_subscriber intervalpoll;
      nchan_channel_id $arg_id;
      nchan_subscriber_first_message oldest;
      nchan_message_buffer_length 1000;
    }}
  }}
}}
""")
        return ["nginx", "-p", str(d), "-e", str(d / "error.log"), "-c", str(d / "nginx.conf")]

    def stop(self) -> None:
        # SIGQUIT: graceful; SIGTERM would do too. The master reaps its worker.
        super().stop()


class Node(Server):
    name = "node"
    publish_path = "/pub/{ch}"
    paths = {"sse": {"kind": "stream", "path": "/events/{ch}"}}

    def command(self) -> list[str]:
        return ["node", str(ROOT / "bench" / "node" / "server.js"), str(self.port)]


class Bare(Server):
    """The floor: a bare Twisted SSE fan-out (``bench/bare/server.py``), no features."""

    name = "bare"
    publish_path = "/pub/{ch}"
    paths = {
        "sse": {"kind": "stream", "path": "/events/{ch}"},
        # connect rows only: Autobahn's own handshake, no subscription behind it
        "ws": {"kind": "ws", "path": "/ws/{ch}", "connect_only": True},
    }

    def command(self) -> list[str]:
        return [sys.executable, str(ROOT / "bench" / "bare" / "server.py"), str(self.port)]


SERVERS = {"pushd": Pushd, "nchan": Nchan, "node": Node, "bare": Bare}


def available(name: str) -> str | None:
    """Why ``name`` cannot run here, or None."""
    if name == "nchan":
        if shutil.which("nginx") is None or not os.path.exists(NCHAN_MODULE):
            return "nginx-light + libnginx-mod-nchan not installed"
    if name == "redis":
        if shutil.which("redis-server") is None and not os.path.exists("/usr/bin/redis-server"):
            return "redis-server not installed"
    if name == "node":
        if shutil.which("node") is None:
            return "node not installed"
        if not (ROOT / "bench" / "node" / "node_modules" / "express").exists():
            return "express not installed (npm install in bench/node)"
    return None
