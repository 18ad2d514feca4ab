"""Send at once when a plain TCP connection has nothing waiting.

Twisted's ``transport.write`` always buffers and asks the reactor to watch
the socket for writability: on epoll that is one ``epoll_ctl`` to register
the socket and another to unregister it once ``doWrite`` has flushed it —
two system calls around every ``send()``. When a server fans one message out
to a thousand idle connections, those calls cost more than the sends.

:func:`write` does what libuv does: when the connection's own buffer is
empty it calls ``send()`` on the socket straight away, and hands only what
the kernel did not take to ``transport.write``, which then buffers, watches
and applies its producer back-pressure as usual. Bytes stay in order because
the direct path is taken only while Twisted holds nothing for the socket.

:meth:`pushd.outlet.Group.sweep`, the loop that runs once per delivery,
makes the same check inline instead of calling :func:`write`: a change to
the conditions here must be made there too.

It applies to plain TCP only (:func:`socket_of` returns None otherwise):
under TLS, or for any other transport, every byte goes through
``transport.write``.
"""

from __future__ import annotations

import socket

from twisted.internet.interfaces import ITransport
from twisted.internet.tcp import Connection


def socket_of(transport: ITransport) -> socket.socket | None:
    """The socket :func:`write` may send on, or None for anything but plain TCP."""
    if isinstance(transport, Connection) and not transport.TLS:
        return transport.socket
    return None


def write(transport: ITransport, sock: socket.socket | None, data: bytes) -> int:
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
