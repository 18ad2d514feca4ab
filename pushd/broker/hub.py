"""Local fan-out: who on this process is subscribed to what.

The hub is separate from the broker (which assigns ids and keeps history) so
that a clustered broker can reuse it: Redis feeds messages in, the hub hands
them to local subscriptions. A subscription orders what it is given: while it
replays history, live messages wait in a list, and anything at or before its
cursor is dropped, so replay-then-live has no gap and no duplicate.

A *watch* is an uncounted live subscription for a fan-out group in the
transport layer: subscriptions at the same message hand their delivery over
to it, stay counted and are told ``closed``, but are no longer pushed to one
by one.
"""

from __future__ import annotations

from typing import Callable, Iterable

from twisted.internet.defer import Deferred, succeed

from pushd.broker.interface import Subscriber
from pushd.model import Message


class LocalSubscription:
    """One subscriber on one channel: its position and its replay buffer."""

    __slots__ = (
        "_hub", "_live", "_pending", "active", "channel", "counted", "last_seq", "subscriber",
    )

    def __init__(
        self, hub: Hub, channel: str, subscriber: Subscriber, counted: bool = True
    ) -> None:
        self.channel = channel
        self.subscriber = subscriber
        self.last_seq = 0
        self.active = True
        self.counted = counted
        self._pending: list[Message] | None = []
        self._hub = hub
        self._live: list[Deferred[None]] | None = None  # made only when someone waits

    def push(self, message: Message) -> None:
        """A live message from the hub: deliver it, or hold it during replay."""
        pending = self._pending
        if pending is not None:
            pending.append(message)
        elif message.seq > self.last_seq:
            self.last_seq = message.seq
            self.subscriber.deliver(message)

    def start(
        self,
        replay: Iterable[Message] = (),
        after: int = 0,
        reset: bool = False,
        reset_cursor: str | None = None,
    ) -> None:
        """Send the notice or replay, then the live messages held meanwhile.

        ``after`` is the cursor's position: nothing at or before it is
        delivered. Pass ``reset=True`` to send a ``reset`` notice first.
        """
        self.last_seq = after
        if reset and self.active:
            self.subscriber.reset(self.channel, reset_cursor)
        for message in replay:
            if not self.active:
                return
            if message.seq > self.last_seq:
                self.last_seq = message.seq
                self.subscriber.deliver(message)
        pending = self._pending or []
        while pending and self.active:
            message = pending.pop(0)
            if message.seq > self.last_seq:
                self.last_seq = message.seq
                self.subscriber.deliver(message)
        self._pending = None
        self._went_live()

    def when_live(self) -> Deferred[None]:
        """Fires once the replay is over and live messages come straight
        through (at once if they already do), or once the subscription ended
        before that: the caller looks at its own state to tell which."""
        if self._pending is None or not self.active:
            return succeed(None)
        d: Deferred[None] = Deferred()
        if self._live is None:
            self._live = []
        self._live.append(d)
        return d

    def _went_live(self) -> None:
        waiting, self._live = self._live, None
        for d in waiting or ():
            d.callback(None)

    def hand_over(self, to: LocalSubscription) -> bool:
        """Let ``to`` (a :meth:`Hub.watch` of the same channel) deliver for us.

        From now on the hub does not push to this subscription; it stays
        counted, cancellable and is told ``closed``. Refused (False) unless
        both are live at the same message, so nothing is lost or doubled.
        """
        if not (self.active and to.active and self._pending is None and to._pending is None):
            return False
        if self.channel != to.channel or self.last_seq != to.last_seq:
            return False
        self._hub._mute(self)
        return True

    def cancel(self) -> None:
        if self.active:
            self.active = False
            self._hub._remove(self)
            self._went_live()

    def __repr__(self) -> str:
        return f"<LocalSubscription {self.channel} at {self.last_seq}>"


class Hub:
    """channel → subscriptions on this process, and the fan-out loop."""

    def __init__(self, on_idle: Callable[[str], None] = lambda channel: None) -> None:
        self._subs: dict[str, set[LocalSubscription]] = {}  # counted: the subscribers
        self._push: dict[str, set[LocalSubscription]] = {}  # what fanout delivers to
        self._on_idle = on_idle
        self.total = 0

    def add(self, channel: str, subscriber: Subscriber) -> LocalSubscription:
        """Register first, replay after (see :meth:`LocalSubscription.start`)."""
        sub = LocalSubscription(self, channel, subscriber)
        self._subs.setdefault(channel, set()).add(sub)
        self._push.setdefault(channel, set()).add(sub)
        self.total += 1
        return sub

    def watch(self, channel: str, subscriber: Subscriber, after: int) -> LocalSubscription:
        """Live messages after ``after`` for a fan-out group; not a subscriber.

        A watch is not counted and keeps no channel alive; subscriptions
        hand their delivery over to it (:meth:`LocalSubscription.hand_over`).
        """
        sub = LocalSubscription(self, channel, subscriber, counted=False)
        sub.last_seq = after
        sub._pending = None
        self._push.setdefault(channel, set()).add(sub)
        return sub

    def fanout(self, message: Message) -> int:
        """Hand ``message`` to every subscription of its channel that is pushed
        to (watches included, handed-over subscriptions not); how many."""
        subs = self._push.get(message.channel)
        if not subs:
            return 0
        # A delivery may end another subscription (a slow client closed), so
        # iterate over a snapshot and skip the ones that ended meanwhile.
        # LocalSubscription.push, inlined: this loop runs once per delivery.
        seq = message.seq
        for sub in tuple(subs):
            if sub.active:
                pending = sub._pending
                if pending is not None:
                    pending.append(message)
                elif seq > sub.last_seq:
                    sub.last_seq = seq
                    sub.subscriber.deliver(message)
        return len(subs)

    def close(self, channel: str) -> int:
        """End every subscription of ``channel`` with a ``closed`` notice; how many.

        Watches hear it too, after the subscriptions they deliver for.
        """
        subs = self._subs.pop(channel, None) or set()
        watches = [s for s in self._push.pop(channel, ()) if not s.counted]
        self.total -= len(subs)
        for sub in (*subs, *watches):
            sub.active = False
        for sub in (*subs, *watches):
            sub.subscriber.closed(channel)
            sub._went_live()
        return len(subs)

    def count(self, channel: str) -> int:
        return len(self._subs.get(channel, ()))

    def holds(self, channel: str) -> bool:
        """Anyone on this process (a subscription or a watch) still takes ``channel``."""
        return channel in self._subs or channel in self._push

    def reset(self, channel: str, cursor: str | None) -> int:
        """Tell every live subscription of ``channel`` that the messages up to
        ``cursor`` could not all be delivered; how many were told.

        For a clustered broker, whose store can lose messages a subscription
        was waiting for. Subscriptions still replaying are not told: their
        own replay decides. Handed-over subscriptions are told themselves
        (their watch, a fan-out group, is never reset).
        """
        told = 0
        subs = self._subs.get(channel, set()) | self._push.get(channel, set())
        for sub in subs:
            if sub.active and sub._pending is None:
                sub.subscriber.reset(channel, cursor)
                told += sub.counted
        return told

    def channels(self) -> Iterable[str]:
        return self._subs.keys()

    def _mute(self, sub: LocalSubscription) -> None:
        push = self._push.get(sub.channel)
        if push is not None:
            push.discard(sub)

    def _remove(self, sub: LocalSubscription) -> None:
        push = self._push.get(sub.channel)
        if push is not None:
            push.discard(sub)
            if not push:
                del self._push[sub.channel]
        subs = self._subs.get(sub.channel)
        if not sub.counted or subs is None or sub not in subs:
            return
        subs.discard(sub)
        self.total -= 1
        if not subs:
            del self._subs[sub.channel]
            self._on_idle(sub.channel)
