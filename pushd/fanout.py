"""Fan-out: one channel's frames shared by every stream that takes them, and
the flusher that sends what waits, a slice of connections per reactor turn.

A :class:`Group` holds a channel's live frames in one wire format once; the
:class:`Flusher` sweeps its members and every :class:`~pushd.outlet.Outlet`
that has bytes waiting, one ``send()`` per connection per visit.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

from twisted.internet.interfaces import IReactorTime

from pushd.model import Message

if TYPE_CHECKING:
    from pushd.outlet import Outlet


class Flusher:
    """Sends what outlets were given, a slice of connections per reactor turn.

    A publish fans out to every subscriber at once, and several publishes
    can land in the same turn (pipelined requests, a batch). Outlets hold
    what they are given until the flusher reaches them, then each makes one
    ``send()`` for all of it: one system call per connection per visit
    instead of one per message, the way a cork works. One timer serves
    every outlet.

    Outlets wait in one first-in, first-out line, and each turn sends for
    at most ``per_turn`` of them before the reactor reads again. Sending to
    a thousand sockets takes longer than the gap between two messages at
    high rates; done in one go, the next publish would wait for the whole
    fan-out and then start its own from the first socket. Done in slices,
    the next publish is read between two slices: outlets not yet reached
    carry both messages in one send, and those already served rejoin the
    end of the line. No connection waits for more than one pass over the
    others, and new connections and publishes are served meanwhile. A
    :class:`Group` waits in the same line and spends the same per-turn
    budget, one send per member it serves.
    """

    def __init__(self, clock: IReactorTime, per_turn: int = 64) -> None:
        self.clock = clock
        self.per_turn = per_turn
        self.waiting: deque[Outlet | Group] = deque()
        self.scheduled = False

    def add(self, outlet: Outlet) -> None:
        self.waiting.append(outlet)
        if not self.scheduled:
            self.scheduled = True
            self.clock.callLater(0, self.run)

    def add_group(self, group: Group) -> None:
        """``group`` has frames its members have not been sent: sweep it."""
        if not group.queued:
            group.queued = True
            self.add(group)  # type: ignore[arg-type]

    def run(self) -> None:
        waiting = self.waiting
        budget = self.per_turn
        while waiting and budget > 0:
            item = waiting.popleft()
            if item.__class__ is Group:
                group: Group = item  # type: ignore[assignment]
                budget -= group.sweep(budget)
                if group.sweeping is not None:  # the rest of its members next turn, first
                    waiting.appendleft(item)
                    break
                continue
            budget -= 1
            item.waiting = False
            # send what waited, unless the peer paused us
            if not item.paused:
                item.flush()
        if waiting:
            self.clock.callLater(0, self.run)
        else:
            self.scheduled = False


GONE = 1 << 62  # the position of a member that left: past any frame, never sent to


class Member(Protocol):
    """A stream in a :class:`Group`: where it is, and what to do with frames."""

    pos: int  # the group's index of the next frame this member has not been sent
    # The outlet the group writes this member's frames to itself (counted per
    # sweep), or None: then every write goes through ``pulled``, which can
    # check the member's own state.
    direct: Outlet | None
    max_bytes: int  # a byte budget (0: none): the sweep reports what it writes

    def spent(self, size: int) -> None:
        """``size`` more bytes of the budget are written; end once it is spent."""

    def pulled(self, data: bytes, count: int) -> None:
        """Write ``count`` frames, ``data``, from the group (counted as deliveries)."""


class Group:
    """One channel's live frames in one wire format, for every stream that takes them.

    Fanning a message out one subscriber at a time costs a call chain per
    subscriber (hub, streamer, outlet, flusher) before any byte is sent. A
    group is one broker watch instead: a message appends its pre-framed
    bytes here once, and the :class:`Flusher` sweeps the members, sending
    each what it has not had yet (``frames[pos:]``, joined once per
    position) in one write. Members that are paused get it queued in their
    outlet, bounded as always. A member writing anything of its own (a
    heartbeat, a notice, its end) first takes what the group holds for it,
    so order is kept. Frames every member has had are dropped after a sweep.
    """

    def __init__(
        self,
        frame: Callable[[Message], bytes],
        flusher: Flusher,
        on_empty: Callable[[Group], None],
        counts: dict[str, int],
        transport: str,
    ) -> None:
        self.frame = frame  # a message's bytes on this group's wire format
        self.counts = counts  # deliveries per transport, the registry's
        self.transport = transport
        self.flusher = flusher
        self.on_empty = on_empty
        self.frames: list[bytes] = []
        self.base = 0  # index of frames[0]
        self.members: dict[Member, None] = {}
        self.queued = False  # in the flusher's line
        # the members a sweep under way has still to visit (taken when it began)
        self.sweeping: Iterator[Member] | None = None
        self.swept_to = 0  # the end when the sweep began
        self.subscription: Any = None  # the broker watch
        self._joined: tuple[int, int, bytes] = (0, 0, b"")

    @property
    def end(self) -> int:
        return self.base + len(self.frames)

    def join(self, member: Member) -> None:
        member.pos = self.end
        self.members[member] = None

    def leave(self, member: Member) -> None:
        member.pos = GONE  # a sweep under way passes it by
        self.members.pop(member, None)
        if not self.members:
            self.on_empty(self)

    def take(self, member: Member) -> None:
        """Give ``member`` every frame it has not had, now."""
        end = self.end
        pos = member.pos
        if pos < end:
            member.pos = end
            member.pulled(self._since(pos, end), end - pos)

    def _since(self, pos: int, end: int) -> bytes:
        """``frames[pos:end]`` as one bytes, joined once for every member at ``pos``."""
        cached = self._joined
        if cached[0] == pos and cached[1] == end:
            return cached[2]
        frames = self.frames[pos - self.base : end - self.base]
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        self._joined = (pos, end, data)
        return data

    def sweep(self, budget: int) -> int:
        """Send to up to ``budget`` members; how many were sent to.

        This loop runs once per delivery, so it makes no call for a member
        whose outlet is idle on plain TCP: it sends on the socket itself,
        under the same conditions as :func:`pushd.compat.send` (nothing
        queued or paused in the outlet, nothing buffered by Twisted, not
        closing), and leaves every other case to ``Outlet.write_now``. A
        member with a byte budget is told what it was written.
        Deliveries are counted once per call, not per member.
        """
        if self.sweeping is None:
            self.sweeping = iter(list(self.members))
            self.swept_to = self.end
        end = self.end
        delivered = used = 0
        last, data, size = -1, b"", 0  # most members are at the same position: join once
        finished = True
        for member in self.sweeping:
            pos = member.pos
            if pos >= end:  # had everything, or left (GONE)
                continue
            if pos != last:
                data = self._since(pos, end)
                size = len(data)
                last = pos
            member.pos = end
            used += 1
            outlet = member.direct
            if outlet is None:
                member.pulled(data, end - pos)
            else:
                delivered += end - pos
                sock = outlet.sock
                t: Any = outlet.transport
                if (
                    sock is None or outlet.ended or outlet.paused or outlet.queue
                    or t.dataBuffer or t._tempDataLen or t.disconnecting or t.TLS
                ):
                    outlet.write_now(data)
                else:
                    outlet.sent += size
                    try:
                        sent = sock.send(data)
                    except BlockingIOError:
                        sent = 0
                    except OSError:  # Twisted's next attempt finds the error, closes it
                        sent = -1
                    if sent != size:
                        # the rest waits in Twisted, with its back-pressure
                        t.write(data[sent:] if sent >= 0 else data)
                if member.max_bytes:
                    member.spent(size)
            if used == budget:
                finished = False
                break
        if delivered:
            self.counts[self.transport] += delivered
        if not finished:  # the rest next turn (an empty rest ends the sweep then)
            return used
        # every member has had everything up to where the sweep began
        self.sweeping = None
        self.queued = False
        del self.frames[: self.swept_to - self.base]
        self.base = self.swept_to
        if self.frames:  # more came during the sweep
            self.flusher.add_group(self)
        return used

    # the broker's side: a watch of the channel
    def deliver(self, message: Message) -> None:
        self.frames.append(self.frame(message))
        self.flusher.add_group(self)

    def reset(self, channel: str, cursor: str | None) -> None:
        """A watch starts live; it is never reset."""

    def closed(self, channel: str) -> None:
        """The members are told themselves; the group ends with the last of them."""
        self.subscription = None
