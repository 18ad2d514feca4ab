"""Every private attribute of Twisted and Autobahn pushd relies on, in one place.

Upper bounds on both in ``pyproject.toml`` keep a release that renames one of
these from arriving unnoticed, and :func:`self_check` (run once when the
daemon is built) turns each trick off, falling back to public API, if an
attribute is gone anyway. The tricks:

- **Direct send** (:func:`send`). Twisted's ``transport.write`` always
  buffers and asks the reactor to watch the socket for writability: on epoll
  one ``epoll_ctl`` to register the socket and another to unregister it once
  ``doWrite`` has flushed it, two system calls around every ``send()``. When
  a server fans one message out to a thousand idle connections, those calls
  cost more than the sends. :func:`send` does what libuv does: when the
  connection's own buffer is empty (``dataBuffer``, ``_tempDataLen``) it
  calls ``send()`` on the socket straight away, and hands only what the
  kernel did not take to ``transport.write``, which then buffers, watches and
  applies its producer back-pressure as usual. Bytes stay in order because
  the direct path is taken only while Twisted holds nothing for the socket.
  Plain TCP only: under TLS, or for any other transport, :func:`socket_of`
  is None and every byte goes through ``transport.write``.
  :meth:`pushd.fanout.Group.sweep`, the loop that runs once per delivery,
  makes the same check inline instead of calling :func:`send` (measured:
  6.5% less CPU per delivery at 1,000 SSE x 50 msg/s); it only does so for
  outlets that :func:`socket_of` gave a socket, so turning direct send off
  here turns it off there too. A change to the conditions here must be made
  there.
- **Autobahn's compression state** (:func:`compresses`): whether a
  WebSocket connection negotiated permessage-deflate (``_perMessageCompress``).
  Unknown means "yes": every message is then framed for that connection
  alone, which is always correct, only slower.
- **Autobahn's timers** (:func:`use_timers`): the factory's
  ``_batched_timer``, replaced so Autobahn's handshake, close and ping timers
  run on pushd's clock, to the millisecond.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.interfaces import ITransport
from twisted.internet.tcp import Connection

DIRECT_SEND = True  # False once self_check finds Twisted's buffer fields gone


def socket_of(transport: ITransport) -> socket.socket | None:
    """The socket :func:`send` may send on, or None for anything but plain TCP."""
    if DIRECT_SEND and isinstance(transport, Connection) and not transport.TLS:
        return transport.socket
    return None


def send(transport: ITransport, sock: socket.socket | None, data: bytes) -> int:
    """Write ``data`` to ``transport``; send directly when it is idle.

    ``sock`` is what :func:`socket_of` returned for this transport. Returns
    how many bytes went out directly (0 when all of ``data`` was handed to
    ``transport.write``). Never raises for a broken connection: a failed
    ``send()`` leaves the bytes to ``transport.write``, whose next attempt
    finds the error and closes the connection the usual way.
    """
    t = transport
    # Twisted holds nothing for the socket and is not closing it. Only the
    # two buffer fields and ``disconnecting`` are read per call: a transport
    # that lost its connection has a closed socket, whose send() fails and
    # falls back to transport.write (which ignores it). TLS is looked at
    # again because startTLS can come later.
    if sock is not None and not (
        t.dataBuffer or t._tempDataLen or t.disconnecting or t.TLS  # type: ignore[attr-defined]
    ):
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            t.write(data)
            return 0
        if sent == len(data):
            return sent
        t.write(data[sent:])
        return sent
    t.write(data)
    return 0


def compresses(protocol: Any) -> bool:
    """Whether a WebSocket connection compresses its messages (or might)."""
    return getattr(protocol, "_perMessageCompress", True) is not None


def use_timers(factory: Any, timers: Any) -> None:
    """Run Autobahn's handshake, close and auto-ping timers through ``timers``
    (an object with ``call_later(delay, f, *args)``)."""
    factory._batched_timer = timers


def self_check() -> list[str]:
    """Check the private attributes above; turn off what is gone; the problems.

    Reads a real TCP connection object (over a socket pair) and a real
    Autobahn factory, so a renamed attribute is caught before any client
    connects, not on the first write.
    """
    global DIRECT_SEND
    problems = []
    a, b = socket.socketpair()
    try:
        conn = Connection(a, None, _NoReactor())  # type: ignore[arg-type]
        missing = [n for n in ("dataBuffer", "_tempDataLen", "disconnecting", "TLS", "socket")
                   if not hasattr(conn, n)]
    except Exception as e:  # any change in how a Connection is built
        missing = [f"Connection({e!r})"]
    finally:
        a.close()
        b.close()
    if missing:
        DIRECT_SEND = False
        problems.append(
            "twisted.internet.tcp.Connection lacks " + ", ".join(missing)
            + ": direct sends are off, every byte goes through transport.write"
        )
    from autobahn.twisted.websocket import WebSocketServerFactory

    factory = WebSocketServerFactory(reactor=_NoReactor())
    if not hasattr(factory, "_batched_timer"):
        problems.append(
            "autobahn's factory has no _batched_timer: its timers are not on pushd's clock"
        )
    return problems


class _NoReactor:
    """Enough of a reactor to build objects that are never run."""

    def callLater(self, *args: Any, **kw: Any) -> None:
        raise RuntimeError("not running")

    def seconds(self) -> float:
        return 0.0
