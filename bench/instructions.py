"""Instructions per request on pushd's request path, counted, not timed.

``python -m bench.instructions [publish|longpoll] [--source DIR]``

A machine whose timing wanders by tens of percent from run to run (this one
did) cannot tell a 5% change; an instruction count can. This builds a real
``Daemon`` (default settings, no listener), connects its HTTP server to an
in-memory transport and feeds it requests: ``publish`` is ``POST
/channels/{ch}`` over 10,000 channels; ``longpoll`` is 1,000 held long-polls
answered by one publish and asked again, per delivery. It runs itself under
``valgrind --tool=callgrind`` twice, with ``N`` and ``N + STEP`` units, and
prints the difference divided by ``STEP``: start-up and warm-up cancel out.
No sockets and no kernel: what it counts is pushd's Python (and the C it
calls), which is what a change to the request path changes.

``--source DIR`` measures another tree (``git archive <commit> pushd twisted |
tar -x -C DIR``), for a before/after. Needs Debian's ``valgrind``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

STEP = {"publish": 3000, "longpoll": 4}  # units measured: requests, rounds of 1,000
WARM = {"publish": 2000, "longpoll": 2}
PER = {"publish": 1, "longpoll": 1000}  # deliveries per unit


class _Transport:
    """Enough of a TCP transport for the HTTP server: writes are kept, then dropped."""

    disconnecting = False

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.out.extend(data)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def loseConnection(self) -> None:
        pass

    def getPeer(self) -> Any:
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "127.0.0.1", 5555)

    def getHost(self) -> Any:
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "127.0.0.1", 8080)


def workload(kind: str, units: int) -> None:
    """Run ``units`` of ``kind`` against a fresh in-process daemon."""
    from twisted.internet import reactor
    from twisted.internet.address import IPv4Address

    from pushd.config import Settings
    from pushd.tap import Daemon, tune_gc

    settings = Settings()
    settings.sources = []
    settings.web.demo = False
    settings.history.size = 5  # bounded memory over 10,000 channels
    daemon = Daemon(settings, reactor)

    def connect() -> _Transport:
        conn = daemon.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
        transport = _Transport()
        transport.protocol = conn
        conn.makeConnection(transport)
        return transport

    tune_gc()
    if kind == "publish":
        t = connect()
        body = b"x" * 100
        requests = [
            b"POST /channels/c%d HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n%s"
            % (i, body)
            for i in range(10000)
        ]
        for i in range(units):
            t.protocol.dataReceived(requests[i % 10000])
            assert t.out and t.out[-1].startswith(b"HTTP/1.1 201"), t.out[-1:]
            t.out.clear()
        return
    clients = [[connect(), None] for _ in range(PER["longpoll"])]

    def ask(client: list[Any]) -> None:
        since = b"&since=" + client[1].encode() if client[1] else b""
        client[0].protocol.dataReceived(
            b"GET /channels/lp/longpoll?timeout=30%s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % since
        )

    for client in clients:
        ask(client)
    for _ in range(units):
        daemon.broker.publish("lp", {"n": 1})
        for client in clients:
            answer = b"".join(client[0].out)
            client[0].out.clear()
            client[1] = json.loads(answer.split(b"\r\n\r\n", 1)[1])["cursor"]
            ask(client)


def count(kind: str, source: str, units: int) -> int:
    """Instructions callgrind counts for a whole run of ``units``."""
    code = (
        f"import sys; sys.path.insert(0, {source!r}); "
        f"from bench.instructions import workload; workload({kind!r}, {units})"
    )
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, "-c", code],
        capture_output=True, text=True, check=False,
    )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if out.returncode != 0 or found is None:
        raise SystemExit(f"valgrind run failed:\n{out.stderr[-3000:]}")
    return int(found.group(1))


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    p.add_argument("kind", nargs="?", default="publish", choices=sorted(STEP))
    p.add_argument("--source", default=".", help="the tree whose pushd package is measured")
    a = p.parse_args()
    warm, step = WARM[a.kind], STEP[a.kind]
    with ThreadPoolExecutor(2) as pool:  # two processes: this machine has two cores
        low, high = pool.map(lambda n: count(a.kind, a.source, n), [warm, warm + step])
    per = (high - low) / (step * PER[a.kind])
    unit = "request" if a.kind == "publish" else "delivery (answer + next request)"
    print(f"{a.kind} ({a.source}): {per:,.0f} instructions per {unit}")


if __name__ == "__main__":
    main()
