"""systemd's notify protocol: ``READY=1``, ``STOPPING=1`` and the watchdog.

``Type=notify`` units wait for ``READY=1`` on the datagram socket named by
``$NOTIFY_SOCKET`` before they count the service as started (and before a
socket-activated or ordered unit is let in). The protocol is one datagram of
``KEY=value`` lines, so it is written here in a few lines rather than pulling
in a dependency. A name starting with ``@`` is an abstract socket (a leading
NUL byte on the wire).

Nothing here blocks: ``sendto`` on a datagram socket either succeeds at once
or fails, and a failure is logged, never raised, because a daemon must keep
serving even when its supervisor went away.
"""

from __future__ import annotations

import os
import socket
from typing import Mapping

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()


def _address(name: str) -> str | bytes:
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to ``$NOTIFY_SOCKET``.

    Returns False when there is no socket to tell (not under systemd) or the
    send failed; the failure is logged once per call.
    """
    name = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not name or name[0] not in "/@":
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), _address(name))
    except OSError as e:
        log.warn(
            "systemd notify {state!r} to {socket} failed: {why}",
            state=state,
            socket=name,
            why=e.strerror,
        )
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``.

    None when the watchdog is off or meant for another process
    (``$WATCHDOG_PID`` names someone else, e.g. after a fork).
    """
    env = environ if environ is not None else os.environ
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2_000_000


class Notifier(Service):
    """Tells systemd about the daemon's life, when ``$NOTIFY_SOCKET`` is set.

    The daemon calls :meth:`ready` once its listeners are up and
    :meth:`stopping` when a drain begins. While running it pings the
    watchdog every half ``$WATCHDOG_USEC``: the ping runs on the reactor, so
    a wedged reactor stops pinging and systemd restarts the service, which
    is the point.
    """

    def __init__(self, clock: IReactorTime, environ: Mapping[str, str] | None = None) -> None:
        self.environ = dict(environ if environ is not None else os.environ)
        self.clock = clock
        self._watchdog: LoopingCall | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.environ.get("NOTIFY_SOCKET"))

    def send(self, state: str) -> bool:
        return notify(state, self.environ) if self.enabled else False

    def startService(self) -> None:
        super().startService()
        interval = watchdog_interval(self.environ)
        if interval and self.enabled:
            self._watchdog = LoopingCall(self.send, "WATCHDOG=1")
            self._watchdog.clock = self.clock
            self._watchdog.start(interval, now=True)

    def ready(self) -> None:
        self.send(f"READY=1\nSTATUS=serving\nMAINPID={os.getpid()}")

    def stopping(self) -> None:
        self.send("STOPPING=1\nSTATUS=draining")

    def stopService(self) -> None:
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self._watchdog = None
        super().stopService()
