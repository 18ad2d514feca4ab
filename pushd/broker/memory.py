"""The embedded broker: channels, ids and bounded history in this process.

Ids are ``<epoch>-<seq>``. The epoch is new at every start, so a cursor from
before a restart is recognised as foreign. ``seq`` comes from one counter for
the whole broker rather than one per channel: a channel that was freed (no
history, no subscribers) and is used again starts above every id it ever had,
so an old cursor can never be mistaken for a position in the new history.

Each channel remembers ``floor``, the position below which it has forgotten
messages (the last one trimmed, or the counter when it was created). A cursor
is honoured when ``floor <= seq <= last``; anything else gets a ``reset``.

All history together weighs at most ``max_bytes`` (each message its JSON
object, :func:`pushd.wire.message_bytes`). Past it the oldest messages of
the whole broker go first: because ``seq`` is global, the oldest is the
channel head with the lowest ``seq``, kept in a heap of channel heads, so a
publish costs no scan of the channels. Every message that leaves history,
whatever the reason (trimmed, expired, deleted, evicted), leaves the total.

Idempotency keys (:meth:`MemoryBroker.publish_keyed`) are kept per channel for
the history TTL, at most ``max_keys`` of them in all (the oldest forgotten
first), apart from the channels themselves: a key outlives its message when
history is trimmed, and a channel freed and used again within the TTL still
knows its keys. DELETE drops them with the history.
"""

from __future__ import annotations

import heapq
import re
import secrets
from collections import deque
from functools import wraps
from typing import Any, Callable, Sequence, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from pushd.broker.hub import Hub, LocalSubscription
from pushd.broker.interface import BrokerStats, ChannelInfo, Page, Receipt, Subscriber
from pushd.errors import LimitError, PushdError
from pushd.model import (
    Message,
    Payload,
    as_payload,
    check_channel,
    check_event,
    check_idempotency_key,
)
from pushd.wire import message_bytes

_SEQ_RE = re.compile(r"[0-9]{1,19}\Z")
T = TypeVar("T")


def _answer(method: Callable[..., T]) -> Callable[..., Deferred[T]]:
    """Run a synchronous broker call and answer as the interface does, with a
    Deferred; a PushdError (bad name, a limit) becomes a failed one."""

    @wraps(method)
    def wrapper(*args: Any, **kw: Any) -> Deferred[T]:
        try:
            return succeed(method(*args, **kw))
        except PushdError:
            return fail()

    return wrapper


def _after(history: deque[Message], after: int) -> list[Message]:
    """The messages of ``history`` (in seq order) after position ``after``.

    Read from the newest end: a client resuming is usually a few messages
    behind, and scanning the whole history per long-poll was most of a
    long-poll's cost at 1,000 clients.
    """
    out = []
    for message in reversed(history):
        if message.seq <= after:
            break
        out.append(message)
    out.reverse()
    return out


class _Channel:
    __slots__ = ("floor", "history", "last_id", "last_seq", "listed", "name")

    def __init__(self, name: str, floor: int) -> None:
        self.name = name
        self.history: deque[Message] = deque()
        self.floor = floor
        self.last_seq = floor
        self.last_id: str | None = None
        self.listed = False  # has an entry in MemoryBroker._heads


class _Keys:
    """Idempotency keys: per channel, key -> (the first publish's id and time).

    A key lives exactly as long as its message could: until its time (ms) is
    older than the TTL, by the same rule as history. ``order`` holds ``(time,
    channel, key)`` in the order keys were recorded, which is the order they
    expire in and are forgotten past ``limit``. An entry whose key went
    another way (its channel deleted) is skipped when met; when such entries
    make ``order`` twice the limit it is rebuilt, so every byte stays bounded.
    """

    __slots__ = ("by_channel", "count", "limit", "order", "ttl")

    def __init__(self, ttl: float, limit: int) -> None:
        self.ttl = ttl
        self.limit = limit
        self.by_channel: dict[str, dict[str, tuple[str, int]]] = {}
        self.order: deque[tuple[int, str, str]] = deque()
        self.count = 0  # keys held, all channels

    def get(self, channel: str, key: str) -> str | None:
        """The id the key was first used for (call :meth:`expire` first)."""
        keys = self.by_channel.get(channel)
        if keys is None:
            return None
        found = keys.get(key)
        return None if found is None else found[0]

    def put(self, channel: str, key: str, message: Message) -> None:
        """Record a key :meth:`get` did not know, for ``message``."""
        keys = self.by_channel.get(channel)
        if keys is None:
            keys = self.by_channel[channel] = {}
        keys[key] = (message.id, message.time)
        self.count += 1
        self.order.append((message.time, channel, key))
        while self.count > self.limit:
            self._pop()
        if len(self.order) > 2 * self.limit + 64:
            self.order = deque(sorted(
                (time, name, key)
                for name, held in self.by_channel.items()
                for key, (_, time) in held.items()
            ))

    def expire(self, now: float) -> None:
        order = self.order
        oldest = int((now - self.ttl) * 1000)  # MemoryBroker._expire's rule
        while order and order[0][0] < oldest:
            self._pop()

    def drop(self, channel: str) -> None:
        """Forget the channel's keys (it was deleted)."""
        keys = self.by_channel.pop(channel, None)
        if keys:
            self.count -= len(keys)

    def _pop(self) -> None:
        """Forget the oldest entry's key, if it is still the one recorded."""
        time, channel, key = self.order.popleft()
        keys = self.by_channel.get(channel)
        if keys is None:
            return
        found = keys.get(key)
        if found is not None and found[1] == time:
            del keys[key]
            self.count -= 1
            if not keys:
                del self.by_channel[channel]


class MemoryBroker(Service):
    """History bounded by ``size`` messages and ``ttl`` seconds per channel.

    ``max_bytes`` bounds all channels' history together (oldest first).
    ``max_channels`` (0: no limit) bounds the channels a publish may create:
    an unending stream of publishes to fresh names is what would otherwise
    grow without end. Subscribing never counts against it; channels made
    only by subscribers are bounded by the connection limits and are freed
    when they leave.

    ``max_keys`` bounds the idempotency keys held, all channels together;
    past it the oldest are forgotten first (a retry of one then stores again).
    """

    def __init__(
        self,
        clock: IReactorTime,
        size: int = 1000,
        ttl: float = 3600,
        epoch: str | None = None,
        sweep_interval: float = 60.0,
        max_channels: int = 0,
        retry_after: int = 5,
        max_bytes: int = 256 * 1024 * 1024,
        max_keys: int = 100_000,
    ) -> None:
        self.clock = clock
        self.size = size
        self.ttl = ttl
        self.epoch = epoch or secrets.token_hex(4)
        self.stats = BrokerStats()
        self.hub = Hub(on_idle=self._idle)
        self._channels: dict[str, _Channel] = {}
        self._seq = 0
        self._sweeper = LoopingCall(self.sweep)
        self._sweeper.clock = clock
        self._sweep_interval = sweep_interval
        self.max_channels = max_channels
        self.retry_after = retry_after
        self.max_bytes = max_bytes
        self.bytes = 0  # what all history weighs now
        # (seq, channel name): at least one entry at or below the head of every
        # channel with history; stale entries are fixed up or dropped when met.
        self._heads: list[tuple[int, str]] = []
        self._keys = _Keys(ttl, max_keys)

    # -- service ---------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._sweeper.start(self._sweep_interval, now=False)

    def stopService(self) -> Deferred[None] | None:
        if self._sweeper.running:
            self._sweeper.stop()
        return super().stopService()

    # -- publishing ------------------------------------------------------
    @_answer
    def publish(self, channel: str, data: Payload | Any, event: str = "message") -> Message:
        check_channel(channel)
        event = check_event(event)
        payload = as_payload(data)  # encoded before anything is stored
        self._check_room({channel})
        return self._publish(channel, payload, event)

    @_answer
    def publish_many(self, items: Sequence[tuple[str, Payload | Any, str]]) -> list[Message]:
        if len(items) == 1:  # most publishes: no sets or lists to build
            (channel, data, event), = items
            check_channel(channel)
            payload = as_payload(data)
            event = check_event(event)
            if self.max_channels and channel not in self._channels:
                self._check_room({channel})
            return [self._publish(channel, payload, event)]
        checked = [(check_channel(c), as_payload(d), check_event(e)) for c, d, e in items]
        self._check_room({c for c, _, _ in checked})
        return [self._publish(c, p, e) for c, p, e in checked]

    @_answer
    def publish_keyed(
        self, items: Sequence[tuple[str, Payload | Any, str, str | None]]
    ) -> list[Receipt]:
        checked = [
            (check_channel(c), as_payload(d), check_event(e),
             None if k is None else check_idempotency_key(k))
            for c, d, e, k in items
        ]
        keys = self._keys
        keys.expire(self.clock.seconds())
        self._check_room(
            {c for c, _, _, k in checked if k is None or keys.get(c, k) is None}
        )
        out = []
        for channel, payload, event, key in checked:
            if key is not None:
                first = keys.get(channel, key)  # an earlier publish's, or this batch's
                if first is not None:
                    out.append(Receipt(first, channel, True))
                    continue
            message = self._publish(channel, payload, event)
            if key is not None:
                keys.put(channel, key, message)
            out.append(Receipt(message.id, channel))
        return out

    def _check_room(self, names: set[str]) -> None:
        """Refuse, before anything is stored, publishes past ``max_channels``."""
        if not self.max_channels:
            return
        new = names - self._channels.keys()
        if new and len(self._channels) + len(new) > self.max_channels:
            raise LimitError(
                "too_many_channels",
                f"this server holds its limit of {self.max_channels} channels",
                self.retry_after,
            )

    def _publish(self, name: str, payload: Payload, event: str) -> Message:
        ch = self._channels.get(name)
        if ch is None:
            ch = self._create(name)
        self._seq += 1
        seq = self._seq
        now = self.clock.seconds()
        message = Message(f"{self.epoch}-{seq}", seq, name, event, payload, int(now * 1000))
        ch.last_seq = seq
        ch.last_id = message.id
        history = ch.history
        history.append(message)
        self.bytes += message_bytes(message)
        if not ch.listed:
            self._list(ch)
        while len(history) > self.size:
            self._drop_oldest(ch)
        if history and history[0].time < int((now - self.ttl) * 1000):  # _expire's test, inlined
            self._expire(ch, now)
        if self.bytes > self.max_bytes:
            self._evict()
        self.stats.published += 1
        self.hub.fanout(message)
        if not history:  # size 0, or expired at once: nothing keeps it
            self._maybe_free(ch)
        return message

    # -- reading ---------------------------------------------------------
    def subscribe(
        self, channel: str, subscriber: Subscriber, since: str | None = None
    ) -> LocalSubscription:
        check_channel(channel)
        ch = self._channels.get(channel) or self._create(channel)
        self._expire(ch, self.clock.seconds())
        sub = self.hub.add(channel, subscriber)
        self._replay(sub, since, ch.last_seq)
        return sub

    def _replay(self, sub: LocalSubscription, since: str | None, now: int) -> None:
        """Start ``sub`` from ``since``: replay, or a ``reset``, then live.

        ``now`` is the channel's position when ``sub`` joined the hub: where
        a live-only subscription starts. Messages published since then wait
        in ``sub`` and are delivered after the replay, without duplicates,
        so a broker that replays on a later turn (tests do, as Redis will)
        keeps the promise.
        """
        ch = self._channels.get(sub.channel)
        if not sub.active or ch is None:  # ended, or deleted (and told closed)
            return
        if since is None:
            sub.start(after=now)
            return
        after = self._position(ch, since)
        if after is None:
            self.stats.resets += 1
            sub.start(after=ch.last_seq, reset=True, reset_cursor=ch.last_id)
        else:
            sub.start(_after(ch.history, after), after=after)

    def watch(self, channel: str, subscriber: Subscriber) -> LocalSubscription:
        """Live messages of ``channel`` from now on, for a fan-out group.

        Not a subscriber (not counted); subscriptions hand their delivery
        over to it with ``hand_over``. See :meth:`Hub.watch`.
        """
        check_channel(channel)
        ch = self._channels.get(channel)
        return self.hub.watch(channel, subscriber, ch.last_seq if ch is not None else 0)

    @_answer
    def read(self, channel: str, since: str | None, limit: int) -> Page:
        ch = self._current(check_channel(channel))
        if since is None:
            if ch is None:
                return Page([], None)
            return Page(list(ch.history)[-limit:] if limit > 0 else [], ch.last_id)
        after = self._position(ch, since) if ch is not None else None
        if after is None:
            self.stats.resets += 1
            return Page([], ch.last_id if ch else None, reset=True)
        assert ch is not None
        messages = _after(ch.history, after)[:limit]
        return Page(messages, messages[-1].id if messages else since)

    @_answer
    def info(self, channel: str) -> ChannelInfo | None:
        ch = self._current(check_channel(channel))
        if ch is None:
            return None
        return ChannelInfo(channel, ch.last_id, self.hub.count(channel), len(ch.history))

    @_answer
    def delete(self, channel: str) -> int | None:
        ch = self._channels.pop(check_channel(channel), None)
        self._keys.drop(channel)  # even when freed: its keys outlive its history
        if ch is None:
            return None
        self.bytes -= sum(map(message_bytes, ch.history))
        self.stats.channels = len(self._channels)
        return self.hub.close(channel)

    def subscribers(self, channel: str) -> int:
        return self.hub.count(channel)

    def subscriber_count(self) -> int:
        return self.hub.total

    def history_size(self) -> int:
        return sum(len(ch.history) for ch in self._channels.values())

    def channel_count(self) -> int:
        return len(self._channels)

    # -- housekeeping ----------------------------------------------------
    def sweep(self) -> None:
        """Drop expired history everywhere and free channels left empty."""
        now = self.clock.seconds()
        self._keys.expire(now)
        for ch in list(self._channels.values()):
            self._expire(ch, now)
            self._maybe_free(ch)

    def _current(self, name: str) -> _Channel | None:
        """The channel with its expired history dropped, or None if it is gone."""
        ch = self._channels.get(name)
        if ch is not None:
            self._expire(ch, self.clock.seconds())
            self._maybe_free(ch)
        return self._channels.get(name)

    def _create(self, name: str) -> _Channel:
        ch = self._channels[name] = _Channel(name, self._seq)
        self.stats.channels = len(self._channels)
        return ch

    def _position(self, ch: _Channel, since: str) -> int | None:
        epoch, sep, tail = since.rpartition("-")
        if not sep or epoch != self.epoch or not _SEQ_RE.match(tail):
            return None
        seq = int(tail)
        if seq < ch.floor or seq > ch.last_seq:
            return None
        return seq

    def _expire(self, ch: _Channel, now: float) -> None:
        history = ch.history
        if not history:
            return
        oldest = int((now - self.ttl) * 1000)
        while history and history[0].time < oldest:
            self._drop_oldest(ch)

    def _drop_oldest(self, ch: _Channel) -> None:
        """Forget ``ch``'s oldest message: cursors at or behind it now get ``reset``."""
        message = ch.history.popleft()
        ch.floor = message.seq
        self.bytes -= message_bytes(message)

    # -- the bound on all history ------------------------------------------
    def _list(self, ch: _Channel) -> None:
        """Give ``ch`` (whose history just began) an entry among the heads."""
        heads = self._heads
        if len(heads) > 2 * len(self._channels) + 64:
            self._relist()  # entries of freed channels: rebuild, amortised O(1)
            if ch.listed:
                return
        ch.listed = True
        heapq.heappush(heads, (ch.history[0].seq, ch.name))

    def _relist(self) -> None:
        for ch in self._channels.values():
            ch.listed = bool(ch.history)
        self._heads = [(ch.history[0].seq, ch.name) for ch in self._channels.values() if ch.listed]
        heapq.heapify(self._heads)

    def _evict(self) -> None:
        """Drop the broker's oldest messages until all history fits ``max_bytes``."""
        heads = self._heads
        while self.bytes > self.max_bytes and heads:
            seq, name = heads[0]
            ch = self._channels.get(name)
            if ch is None or not ch.history:  # freed, or emptied since
                heapq.heappop(heads)
                if ch is not None:
                    ch.listed = False
                continue
            head = ch.history[0].seq
            if head != seq:  # its head moved on (trimmed, expired): re-file it
                heapq.heapreplace(heads, (head, name))
                continue
            # the oldest message of the whole broker
            self._drop_oldest(ch)
            if ch.history:
                heapq.heapreplace(heads, (ch.history[0].seq, name))
            else:
                heapq.heappop(heads)
                ch.listed = False
                self._maybe_free(ch)

    def _maybe_free(self, ch: _Channel) -> None:
        if not ch.history and not self.hub.count(ch.name):
            if self._channels.get(ch.name) is ch:
                del self._channels[ch.name]
                self.stats.channels = len(self._channels)

    def _idle(self, channel: str) -> None:
        ch = self._channels.get(channel)
        if ch is not None:
            self._maybe_free(ch)
