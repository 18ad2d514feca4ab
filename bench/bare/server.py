"""The floor: the least a Twisted server can do to fan SSE out, and nothing else.

Not a product and not pushd: one ``Protocol`` per connection, no broker,
no history, no HTTP library. ``GET /events/{ch}`` answers with an SSE head
and keeps the connection in a list; ``POST /pub/{ch}`` (keep-alive,
pipelined, ``Content-Length`` bodies) frames the body once and sends it to
every connection of the channel, straight on the socket when Twisted holds
nothing for it (the developers' guide's "bare Twisted Protocol, send at
once when the socket is idle"). Whatever pushd costs beyond this is the
price of its features; what this costs is the price of the machine.

``GET /ws/{ch}`` hands the connection to a plain Autobahn
``WebSocketServerProtocol`` (no HTTP server, no subscription): what a
WebSocket connection costs with Autobahn's handshake and nothing of pushd's.

Usage: ``python bench/bare/server.py PORT``
"""

from __future__ import annotations

import json
import sys

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.protocol import Factory, Protocol

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def fan_out(conns: dict[Conn, None], data: bytes) -> None:
    for conn in conns:
        t = conn.transport
        if t.dataBuffer or t._tempDataLen:  # Twisted holds bytes: go behind them
            t.write(data)
            continue
        try:
            sent = t.socket.send(data)
        except OSError:
            sent = 0
        if sent < len(data):
            t.write(data[sent:])


class Bare(Factory):
    """Channel name → its open subscribers (an insertion-ordered dict as a set)."""

    def __init__(self) -> None:
        self.channels: dict[str, dict[Conn, None]] = {}
        self.last_id = 0
        self.websockets = WebSocketServerFactory()
        self.websockets.protocol = WebSocketServerProtocol

    def buildProtocol(self, addr: object) -> Conn:
        return Conn(self)


class Conn(Protocol):
    def __init__(self, bare: Bare) -> None:
        self.bare = bare
        self.buf = b""
        self.channel: str | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.channel is not None:
            return  # a subscriber has nothing more to say
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").split("\r\n")
            method, path, _ = head[0].split(" ", 2)
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.raw = self.buf[: end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            if not self.handle(method, path, body):
                return

    def handle(self, method: str, path: str, body: bytes) -> bool:
        """Answer one request; False once the connection is no longer HTTP."""
        bare = self.bare
        if method == "GET" and path.startswith("/ws/"):
            # Autobahn reads the handshake itself: give it the bytes again
            ws = bare.websockets.buildProtocol(self.transport.getPeer())
            self.transport.protocol = ws
            ws.makeConnection(self.transport)
            ws.dataReceived(self.raw)
            return False
        if method == "GET" and path.startswith("/events/"):
            self.channel = path[len("/events/") :]
            bare.channels.setdefault(self.channel, {})[self] = None
            self.transport.write(HEAD + chunk(b"retry: 3000\n\n"))
            return False
        if method == "POST" and path.startswith("/pub/"):
            conns = bare.channels.get(path[len("/pub/") :], {})
            bare.last_id += 1
            fan_out(conns, chunk(b"id: %d\ndata: %s\n\n" % (bare.last_id, body)))
            answer = json.dumps({"id": bare.last_id, "subscribers": len(conns)}).encode()
            self.transport.write(
                b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)
            )
            return True
        ok = path == "/healthz"
        self.transport.write(
            b"HTTP/1.1 %s\r\nContent-Length: 2\r\nConnection: close\r\n\r\n%s"
            % ((b"200 OK", b"ok") if ok else (b"404 Not Found", b"no"))
        )
        self.transport.loseConnection()
        return False

    def connectionLost(self, reason: object = None) -> None:
        if self.channel is not None:
            self.bare.channels.get(self.channel, {}).pop(self, None)


def main() -> None:
    from twisted.internet import reactor  # Linux's default: epoll

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8091
    reactor.listenTCP(port, Bare(), backlog=4096, interface="127.0.0.1")
    reactor.run()  # Twisted stops on SIGTERM


if __name__ == "__main__":
    main()
