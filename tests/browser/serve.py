"""pushd for the browser tests: the real daemon, plus a control port only tests reach.

Run as ``python -m tests.browser.serve [twistd pushd options]``. It builds the
service tree with ``pushd.tap`` exactly as ``twistd pushd`` does, then listens
on a second, test-only port where ``POST /drop`` aborts every subscriber's
TCP connection (what a flaky network or a restarted proxy does). Once both
are up it prints one line, ``PUSHD-TEST {"url": ..., "control": ...}``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from pushd.tap import Listener, Options, makeService


def _tcp(conn: Any) -> Any:
    """The TCP transport under a subscriber (a response or a WebSocket)."""
    request = getattr(conn, "request", None)
    if request is not None:
        return request.channel.transport
    return conn.transport


class Drop(Resource):
    isLeaf = True

    def __init__(self, daemon: Any) -> None:
        super().__init__()
        self.daemon = daemon

    def render_POST(self, request: Request) -> bytes:
        dropped: dict[str, int] = {}
        for transport, conn in list(self.daemon.registry.all()):
            _tcp(conn).abortConnection()
            dropped[transport] = dropped.get(transport, 0) + 1
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(dropped).encode()


def main(argv: list[str]) -> None:
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)], redirectStandardIO=False)
    options = Options()
    options.parseOptions(argv)
    daemon = makeService(options, reactor)
    root = Resource()
    root.putChild(b"drop", Drop(daemon))
    control = Listener("tcp:0:interface=127.0.0.1", Site(root), reactor)

    def announce(_: object) -> None:
        port = daemon.listeners[0].port.getHost().port  # type: ignore[union-attr]
        ports = {
            "url": f"http://127.0.0.1:{port}",
            "control": f"http://127.0.0.1:{control.port.getHost().port}",  # type: ignore[union-attr]
        }
        print("PUSHD-TEST " + json.dumps(ports), flush=True)

    daemon.startService()
    control.startService()
    daemon.ready().addCallback(lambda _: control.ready).addCallback(announce)
    reactor.addSystemEventTrigger("before", "shutdown", daemon.stopService)
    reactor.addSystemEventTrigger("before", "shutdown", control.stopService)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
