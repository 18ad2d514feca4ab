"""The Redis broker: channels, ids and history shared by every pushd node.

Each channel is a Redis Stream (its history, trimmed to ``size`` messages and
``ttl`` seconds) and a small hash (its epoch, last seq and the Redis
``run_id`` that wrote it), under keys with a ``{channel}`` hash tag. One Lua
script (``channel.lua``, run by EVALSHA and sent again on NOSCRIPT) stores,
trims and PUBLISHes a message in one step, with seq and time from Redis.

Ids are ``<epoch>-<seq>`` with an epoch per channel. Redis starts a new one
whenever it lost the channel's data (the hash is gone: expired, deleted,
flushed; or it was written by another Redis server: a restart without
persistence, a failover), so an old cursor gets ``reset``, never a position
in a different history.

Fan-out: a node follows a channel (:class:`_Feed`) while it has local
subscribers, SUBSCRIBEd to the channel's pub/sub channel, and unsubscribes
``linger`` seconds after the last one leaves. Messages enter the same
:class:`~pushd.broker.hub.Hub` as the memory broker's. Pub/sub is
at-most-once, so the feed keeps the last seq it delivered and fills any gap
from the stream (``XRANGE``); a gap the stream no longer covers is told to
the local subscribers as ``reset``. After Redis comes back, and every
``check_interval`` seconds (which also catches a lost *last* message), each
feed is filled after its last delivered seq.

``Message.seq`` is this node's own ordering of a channel's messages: the
Redis seq plus an offset that grows when the channel's epoch changes, so the
hub's "nothing at or before the subscription's position" rule holds across
epochs. Only the ``id`` goes on the wire.

Redis unavailable (no connection, or no answer in ``timeout`` seconds):
publish, read, info and delete fail with a 503 ``unavailable`` and a
Retry-After; subscriptions stay open and are filled in when it is back.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections import deque
from importlib import resources
from typing import Any, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from pushd.broker.census import Census
from pushd.broker.hub import Hub, LocalSubscription
from pushd.broker.interface import BrokerStats, ChannelInfo, Page, Receipt, Subscriber
from pushd.broker.resp import Link, RedisURL, ReplyError, Unavailable
from pushd.errors import LimitError, PushdError
from pushd.model import (
    Message,
    Payload,
    as_payload,
    check_channel,
    check_event,
    check_idempotency_key,
    text_payload,
)

log = Logger()

SCRIPT = resources.files("pushd.broker").joinpath("channel.lua").read_bytes()
SCRIPT_SHA = hashlib.sha1(SCRIPT).hexdigest()
_SEQ_RE = re.compile(r"[0-9]{1,15}\Z")  # below 2**53: exact in the script's numbers
_DELETED = object()


def _parse_cursor(cursor: str) -> tuple[str, int] | None:
    epoch, sep, tail = cursor.rpartition("-")
    if not sep or not epoch or not _SEQ_RE.match(tail):
        return None
    return epoch, int(tail)


def _payload(blob: bytes) -> tuple[str, Payload]:
    """``<event>\\n<kind><data>`` as stored: the event and the payload."""
    event, _, rest = blob.partition(b"\n")
    kind, data = rest[:1], rest[1:]
    payload = Payload(data, None) if kind == b"j" else text_payload(data.decode("utf-8"))
    return event.decode("ascii"), payload


class _Feed:
    """What this node follows of one channel, and how far it has delivered.

    ``epoch``/``pos``: the channel's epoch and the last Redis seq handed to
    the hub (``epoch`` None: Redis had no data for it). ``local`` is the last
    ``Message.seq`` handed to the hub; ``base`` maps the current epoch's seqs
    onto it (``local == base + pos``).
    """

    __slots__ = (
        "again", "arrived", "base", "busy", "epoch", "filled", "idle", "incoming", "known",
        "local", "name", "outstanding", "pos", "retired", "waiters",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.epoch: str | None = None
        self.pos = 0
        self.base = 0
        self.local = 0
        self.known = False  # position read once (when the feed was made)
        self.outstanding = 0  # SUBSCRIBEs sent and not yet confirmed
        self.incoming: deque[tuple[int, Any]] = deque()  # (arrival, parsed pub/sub message)
        self.arrived = 0  # arrivals counted; a fill started at n supersedes arrivals before n
        self.filled = -1  # arrival count when the last fill started
        self.busy = False
        self.again = False  # another fill was asked for while one ran
        self.retired: set[str] = set()
        self.waiters: list[Deferred[None]] = []  # for the next fill's end
        self.idle: IDelayedCall | None = None

    def cursor(self) -> str | None:
        return f"{self.epoch}-{self.pos}" if self.epoch is not None and self.pos else None

    def retire(self) -> None:
        if self.epoch is not None:
            self.retired.add(self.epoch)
            if len(self.retired) > 64:
                self.retired.pop()


class RedisBroker(Service):
    """The broker on Redis; the constructor matches MemoryBroker's for the daemon.

    ``url`` is ``redis://[:password@]host:port/db`` (``rediss://`` for TLS).
    ``prefix`` starts every key and pub/sub channel (several pushd
    installations, or tests, can share one Redis). ``max_bytes`` is not
    applied: Redis's own ``maxmemory`` bounds memory; the per-channel count
    and age are. ``max_channels`` is not applied either (it would need a
    count of all channels, kept in Redis).
    """

    def __init__(
        self,
        clock: IReactorTime,
        size: int = 1000,
        ttl: float = 3600,
        *,
        url: str = "redis://127.0.0.1:6379/0",
        timeout: float = 2.0,
        prefix: str = "pushd:",
        max_channels: int = 0,
        retry_after: int = 5,
        max_bytes: int = 0,
        linger: float = 5.0,
        check_interval: float = 30.0,
        keep: float = 300.0,
        epoch: str | None = None,
        census_interval: float = 2.0,
    ) -> None:
        self.clock = clock
        self.size = size
        self.ttl = ttl
        self.url = RedisURL(url)
        self.timeout = timeout
        self.prefix = prefix
        self.retry_after = retry_after
        self.max_channels = max_channels
        self.max_bytes = max_bytes
        self.linger = linger
        self.check_interval = check_interval
        self.keep = keep  # seconds a channel's hash outlives its history
        # Tests: the epoch every new (or renewed) channel gets, as a memory
        # broker has one; None (the default) draws a fresh one each time.
        self.epoch = epoch
        self.stats = BrokerStats()
        self.hub = Hub(on_idle=self._idle)
        self._feeds: dict[str, _Feed] = {}
        self._push_prefix = prefix.encode()
        self.commands = Link(
            clock, self.url, timeout=timeout, name="commands", on_ready=self._commands_up
        )
        self.pubsub = Link(
            clock, self.url, timeout=timeout, pubsub=True, name="pub/sub",
            on_ready=self._pubsub_up, on_lost=self._pubsub_lost, on_push=self._push,
        )
        self._checker = LoopingCall(self.check)
        self._checker.clock = clock
        # subscribers on the other nodes, for GET /channels/{ch}
        self.census = Census(self.commands, self.hub, clock, prefix, interval=census_interval)

    # -- service -------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self.commands.start()
        self.pubsub.start()
        self._checker.start(self.check_interval, now=False)
        self.census.start()

    def stopService(self) -> Deferred[None]:
        """Stop following; the links close once this node's subscriber counts
        are taken back from Redis (at most ``timeout`` later)."""
        if self._checker.running:
            self._checker.stop()
        for feed in self._feeds.values():
            if feed.idle is not None and feed.idle.active():
                feed.idle.cancel()
        super().stopService()

        def close(_: object) -> None:
            self.commands.stop()
            self.pubsub.stop()

        return self.census.stop().addBoth(close)

    @property
    def available(self) -> bool:
        """Both connections to Redis are up (what ``/readyz`` reports)."""
        return self.commands.up and self.pubsub.up

    # -- the script ------------------------------------------------------------
    def _key(self, channel: str) -> tuple[str, str]:
        tag = f"{self.prefix}{{{channel}}}"
        return f"{tag}:h", f"{tag}:s"

    def _idempotency_keys(self, channel: str) -> tuple[str, str]:
        """The channel's idempotency keys: a hash (key -> first publish) and a
        zset (key by time, to expire them oldest first)."""
        tag = f"{self.prefix}{{{channel}}}"
        return f"{tag}:k", f"{tag}:z"

    def _run(self, op: str, keys: list[str], args: list[Any]) -> Deferred[Any]:
        """The script's reply: at once on a link that is up, else once it is
        (at most ``timeout`` later). Failures are :class:`LimitError`
        (``unavailable``, a 503)."""
        if self.commands.up:
            return self._script(op, keys, args)
        return Deferred.fromCoroutine(self._run_when_up(op, keys, args))

    async def _run_when_up(self, op: str, keys: list[str], args: list[Any]) -> Any:
        try:
            await self.commands.ready()
        except Unavailable as e:
            self._refused(Failure(e))
        return await self._script(op, keys, args)

    def _script(self, op: str, keys: list[str], args: list[Any]) -> Deferred[Any]:
        """The script, by its hash; sent whole when Redis does not have it.

        It carries the run_id of the server the connection reached, so it is
        sent on that connection or not at all (``wait=False``). Callbacks, not
        a coroutine: this is every publish's path (1.5% of its instructions)."""
        link = self.commands
        argv = [
            op, link.run_id, self.epoch or secrets.token_hex(4), self.prefix,
            self.size, int(self.ttl * 1000), int((self.ttl + self.keep) * 1000), *args,
        ]
        head = (len(keys), *keys, *argv)

        def unknown(f: Failure) -> Any:
            if f.check(ReplyError) and str(f.value).startswith("NOSCRIPT"):
                return link.execute("EVAL", SCRIPT, *head, wait=False)
            return f

        d = link.execute("EVALSHA", SCRIPT_SHA, *head, wait=False)
        return d.addErrback(unknown).addErrback(self._refused)

    def _refused(self, f: Failure) -> Any:
        """Redis gone, or refusing the script: the caller's 503."""
        if f.check(Unavailable):
            raise LimitError(
                "unavailable", f"the message store is unavailable: {f.value}", self.retry_after
            )
        if f.check(ReplyError):
            log.error("redis: the channel script failed: {e}", e=f.value)
            raise LimitError(
                "unavailable", f"the message store refused: {f.value}", self.retry_after
            )
        return f

    def _message(self, name: str, epoch: str, seq: int, local: int, entry: Any) -> Message:
        """A stream entry ``[id, [b"t", time, b"m", blob]]`` as a message."""
        fields = entry[1]
        event, payload = _payload(fields[3])
        return Message(f"{epoch}-{seq}", local, name, event, payload, int(fields[1]))

    # -- publishing ------------------------------------------------------------
    def publish(
        self, channel: str, data: Payload | Any, event: str = "message"
    ) -> Deferred[Message]:
        return self.publish_many([(channel, data, event)]).addCallback(lambda ms: ms[0])

    def publish_many(
        self, items: Sequence[tuple[str, Payload | Any, str]]
    ) -> Deferred[list[Message]]:
        try:
            checked = [(check_channel(c), as_payload(d), check_event(e)) for c, d, e in items]
        except PushdError:
            return fail()
        return self._publish(checked)

    def publish_keyed(
        self, items: Sequence[tuple[str, Payload | Any, str, str | None]]
    ) -> Deferred[list[Receipt]]:
        """Each key is looked up and recorded inside the script that stores the
        message, so two nodes publishing the same key at once store one."""
        try:
            checked = [(check_channel(c), as_payload(d), check_event(e)) for c, d, e, _ in items]
            keys = [None if k is None else check_idempotency_key(k) for _, _, _, k in items]
        except PushdError:
            return fail()
        return self._publish(checked, keys).addCallback(
            lambda out: [m if isinstance(m, Receipt) else Receipt(m.id, m.channel) for m in out]
        )

    def _publish(
        self, checked: list[tuple[str, Payload, str]], keys: list[str | None] | None = None
    ) -> Deferred[list[Any]]:
        """Messages stored; with ``keys``, a :class:`Receipt` (replayed) for
        each item whose key had been used."""
        if not checked:
            return succeed([])
        names: list[str] = []
        keyed: list[str] = []  # the keyed items' key hash and zset, after the channels'
        args: list[Any] = []
        for i, (channel, payload, event) in enumerate(checked):
            names.extend(self._key(channel))
            key = keys[i] if keys is not None else None
            if key is not None:
                keyed.extend(self._idempotency_keys(channel))
            if payload.text is None:
                args.extend((channel, event, b"j", payload.json, key or ""))
            else:
                args.extend((channel, event, b"t", payload.text.encode("utf-8"), key or ""))
        return self._run("pub", names + keyed, args).addCallback(self._stored, checked)

    def _stored(self, reply: list[Any], checked: list[tuple[str, Payload, str]]) -> list[Any]:
        """The script's answer to ``pub``: each item's message, delivered here
        at once when it is the next one this node expects."""
        out: list[Any] = []
        published = 0
        for i, (channel, payload, event) in enumerate(checked):
            epoch, seq, time = reply[4 * i].decode(), int(reply[4 * i + 1]), int(reply[4 * i + 2])
            if reply[4 * i + 3]:  # its key had been used: nothing stored
                out.append(Receipt(f"{epoch}-{seq}", channel, True))
                continue
            feed = self._feeds.get(channel)
            # Delivered here at once when it is the next one this node expects;
            # its pub/sub copy is then dropped as already delivered.
            now = (
                feed is not None and feed.known and not feed.busy and not feed.incoming
                and self._next(feed, epoch, seq)
            )
            local = feed.base + seq if feed is not None and feed.epoch == epoch else seq
            message = Message(f"{epoch}-{seq}", local, channel, event, payload, time)
            out.append(message)
            published += 1
            if now:
                assert feed is not None
                self._deliver(feed, message, seq)
        self.stats.published += published
        return out

    # -- reading ---------------------------------------------------------------
    def read(self, channel: str, since: str | None, limit: int) -> Deferred[Page]:
        try:
            check_channel(channel)
        except PushdError:
            return fail()
        return Deferred.fromCoroutine(self._read(channel, since, limit))

    async def _read(self, channel: str, since: str | None, limit: int) -> Page:
        if since is None:
            epoch, last, _, _, entries = await self._state(channel, "", "", max(limit, 0))
            if epoch is None:
                return Page([], None)
            messages = [self._entry(channel, epoch, e) for e in entries]
            return Page(messages, f"{epoch}-{last}" if last else None)
        cursor = _parse_cursor(since)
        want, after = cursor if cursor is not None else ("", 0)
        epoch, last, first, length, entries = await self._state(
            channel, want, str(after) if cursor else "", limit if cursor else 0
        )
        if epoch is None or not _honoured(cursor, epoch, last, first, length):
            self.stats.resets += 1
            return Page([], f"{epoch}-{last}" if epoch is not None and last else None, reset=True)
        messages = [self._entry(channel, epoch, e) for e in entries[: max(limit, 0)]]
        return Page(messages, messages[-1].id if messages else since)

    def _entry(self, channel: str, epoch: str, entry: Any) -> Message:
        seq = int(entry[0].partition(b"-")[0])
        return self._message(channel, epoch, seq, seq, entry)

    async def _state(
        self, channel: str, want: str, after: str, limit: int, touch: bool = False
    ) -> tuple[str | None, int, int, int, list[Any]]:
        """The channel's epoch (None: no data), last seq, first seq kept,
        history length, and up to ``limit`` entries (after ``after`` if
        ``want`` is its epoch; the first ones if not; the newest without
        ``after``)."""
        reply = await self._run(
            "read", list(self._key(channel)), [channel, want, after, limit, "1" if touch else ""]
        )
        epoch = reply[0].decode() or None
        return epoch, int(reply[1]), int(reply[2]), int(reply[3]), reply[4]

    def info(self, channel: str) -> Deferred[ChannelInfo | None]:
        try:
            check_channel(channel)
        except PushdError:
            return fail()
        return Deferred.fromCoroutine(self._info(channel))

    async def _info(self, channel: str) -> ChannelInfo | None:
        epoch, last, _, length, _ = await self._state(channel, "", "", 0)
        try:  # this node's, and the other live nodes' as they last told
            others = await self.census.others(channel)
        except (Unavailable, ReplyError) as e:
            log.warn("redis: subscribers on other nodes unknown: {e}", e=e)
            others = 0
        subscribers = self.hub.count(channel) + others
        if not length and not subscribers:
            return None
        last_id = f"{epoch}-{last}" if epoch is not None and last else None
        return ChannelInfo(channel, last_id, subscribers, length)

    def delete(self, channel: str) -> Deferred[int | None]:
        try:
            check_channel(channel)
        except PushdError:
            return fail()
        return Deferred.fromCoroutine(self._delete(channel))

    async def _delete(self, channel: str) -> int | None:
        had, epoch = await self._run(
            "del", [*self._key(channel), *self._idempotency_keys(channel)], [channel]
        )
        feed = self._feeds.get(channel)
        if feed is not None:
            if epoch:
                feed.retired.add(epoch.decode())  # its own notice, when it comes, is done here
            self._close(feed)
        told = self.hub.close(channel)
        self._idle(channel)
        if not had and not told:
            return None
        return told

    def subscribers(self, channel: str) -> int:
        return self.hub.count(channel)

    def subscriber_count(self) -> int:
        return self.hub.total

    def history_size(self) -> int:
        """Not known without asking Redis: 0 (``/metrics`` reads it on every scrape)."""
        return 0

    def channel_count(self) -> int:
        """Channels this node follows (has subscribers for)."""
        return len(self._feeds)

    # -- subscribing -----------------------------------------------------------
    def subscribe(
        self, channel: str, subscriber: Subscriber, since: str | None = None
    ) -> LocalSubscription:
        check_channel(channel)
        sub = self.hub.add(channel, subscriber)
        feed = self._follow(channel)
        if since is None and feed.known:
            sub.start(after=feed.local)
        else:
            Deferred.fromCoroutine(self._start(sub, feed, since)).addErrback(
                lambda f: log.failure("redis: starting a subscription", f)
            )
        return sub

    def watch(self, channel: str, subscriber: Subscriber) -> LocalSubscription:
        check_channel(channel)
        feed = self._follow(channel)
        return self.hub.watch(channel, subscriber, feed.local)

    async def _start(self, sub: LocalSubscription, feed: _Feed, since: str | None) -> None:
        """Replay after ``since`` (or reset), then live, once Redis can say.

        The subscription joined the hub before this runs, and the feed was
        SUBSCRIBEd before the history is read: every message after what the
        read returns reaches the hub, and the hub drops what the replay had.
        """
        cursor = _parse_cursor(since) if since is not None else None
        tries = 0
        while sub.active and self.running:
            if not feed.known:
                await self._next_fill(feed)
                continue
            if self._feeds.get(sub.channel) is not feed:  # deleted and followed anew
                feed = self._follow(sub.channel)
                continue
            if since is None:
                sub.start(after=feed.local)
                return
            want, after = cursor if cursor is not None else ("", 0)
            try:
                epoch, last, first, length, entries = await self._state(
                    sub.channel, want, str(after) if cursor else "",
                    self.size if cursor else 0,
                )
            except LimitError:
                await self.commands.when_up()
                continue
            if not sub.active:
                return
            tries += 1
            if epoch != feed.epoch and tries < 4:
                await self._fill(feed)  # the feed has not seen this epoch yet
                continue
            if epoch != feed.epoch:  # changing under us: start where the feed is
                self.stats.resets += 1
                sub.start(after=feed.local, reset=True, reset_cursor=feed.cursor())
                return
            if epoch is not None and _honoured(cursor, epoch, last, first, length):
                assert cursor is not None
                replay = [
                    self._message(sub.channel, epoch, s, feed.base + s, e)
                    for e in entries
                    if (s := int(e[0].partition(b"-")[0])) > cursor[1]
                ]
                sub.start(replay, after=feed.base + cursor[1])
                return
            self.stats.resets += 1
            position = feed.base + last if epoch is not None else feed.local
            reset_cursor = f"{epoch}-{last}" if epoch is not None and last else None
            sub.start(after=position, reset=True, reset_cursor=reset_cursor)
            return

    def _next_fill(self, feed: _Feed) -> Deferred[None]:
        """Fires when the feed's next (or running) fill ends, or it is unfollowed."""
        d: Deferred[None] = Deferred()
        feed.waiters.append(d)
        return d

    # -- following channels ------------------------------------------------------
    def _follow(self, channel: str) -> _Feed:
        feed = self._feeds.get(channel)
        if feed is None:
            feed = self._feeds[channel] = _Feed(channel)
            self.stats.channels = len(self._feeds)
            # Where the channel is now, read at once: a subscriber from now
            # on starts there. The SUBSCRIBE's confirmation fills after it.
            self._fill(feed)
            if self.pubsub.up:
                self._subscribe([feed])
        elif feed.idle is not None:
            if feed.idle.active():
                feed.idle.cancel()
            feed.idle = None
        return feed

    def _subscribe(self, feeds: list[_Feed]) -> None:
        """One SUBSCRIBE for ``feeds``; each is confirmed by name (see _push)."""
        for feed in feeds:
            feed.outstanding += 1
        self.pubsub.send(("SUBSCRIBE", *(self.prefix + f.name for f in feeds)))

    def _idle(self, channel: str) -> None:
        """The last subscriber left: unfollow a little later, unless one comes back."""
        feed = self._feeds.get(channel)
        if feed is not None and feed.idle is None and self.running:
            feed.idle = self.clock.callLater(self.linger, self._unfollow, feed)

    def _unfollow(self, feed: _Feed) -> None:
        feed.idle = None
        if self.hub.holds(feed.name) or self._feeds.get(feed.name) is not feed:
            return
        del self._feeds[feed.name]
        self.stats.channels = len(self._feeds)
        for d in feed.waiters:
            d.callback(None)
        feed.waiters = []
        if self.pubsub.up:
            self.pubsub.send(("UNSUBSCRIBE", self.prefix + feed.name))

    def _pubsub_up(self, link: Link) -> None:
        for feed in self._feeds.values():
            feed.outstanding = 0
        if self._feeds:
            self._subscribe(list(self._feeds.values()))

    def _pubsub_lost(self) -> None:
        for feed in self._feeds.values():
            feed.outstanding = 0

    def _commands_up(self, link: Link) -> None:
        """Back (or first) on Redis: fill every feed after what it delivered.

        Runs on the next turn, once the link counts as up."""
        self.clock.callLater(0, self._refill_all)

    def _refill_all(self) -> None:
        for feed in list(self._feeds.values()):
            if not feed.known or (feed.outstanding == 0 and self.pubsub.up):
                self._fill(feed)

    def check(self) -> None:
        """Every ``check_interval``: fill each feed (a lost last message shows
        no gap until the next one), drop idle feeds, and PING the pub/sub
        connection (a dead one that TCP has not noticed is dropped)."""
        self._refill_all()
        for feed in list(self._feeds.values()):
            if not self.hub.holds(feed.name) and feed.idle is None:
                self._unfollow(feed)
        if self.pubsub.up:
            self.pubsub.execute("PING").addErrback(lambda f: None)

    # -- what pub/sub brings -----------------------------------------------------
    def _push(self, reply: list[Any]) -> None:
        kind, name = reply[0], reply[1]
        if not name.startswith(self._push_prefix):
            return
        feed = self._feeds.get(name[len(self._push_prefix):].decode())
        if feed is None:
            return
        if kind == b"subscribe":
            if feed.outstanding:
                feed.outstanding -= 1
            if not feed.outstanding:  # subscribed: what Redis holds now, then what follows
                self._fill(feed)
            return
        if kind != b"message" or feed.outstanding:
            return  # an unsubscribe; or from before this node's latest SUBSCRIBE
        body = reply[2]
        if body.startswith(b"!"):
            item: Any = (_DELETED, body[1:].decode())
        else:
            epoch, seq, time, blob = body.split(b"\n", 3)
            item = (epoch.decode(), int(seq), int(time), blob)
        feed.arrived += 1
        feed.incoming.append((feed.arrived, item))
        self._pump(feed)

    def _pump(self, feed: _Feed) -> None:
        """Deliver what arrived, in order; a gap or a new epoch asks Redis."""
        if feed.busy or not feed.known:
            return
        incoming = feed.incoming
        while incoming:
            arrival, item = incoming[0]
            epoch = item[1] if item[0] is _DELETED else item[0]
            if epoch in feed.retired:
                incoming.popleft()
                continue
            if item[0] is _DELETED:
                incoming.popleft()
                feed.retired.add(epoch)
                self._close(feed)
                self.hub.close(feed.name)
                self._idle(feed.name)
                continue
            seq = item[1]
            if epoch == feed.epoch and seq <= feed.pos:
                incoming.popleft()
                continue
            if self._next(feed, epoch, seq):
                incoming.popleft()
                event, payload = _payload(item[3])
                message = Message(
                    f"{epoch}-{seq}", feed.base + seq, feed.name, event, payload, item[2]
                )
                self._deliver(feed, message, seq)
                continue
            if arrival <= feed.filled:
                incoming.popleft()  # a fill since it arrived has settled it
                continue
            self._fill(feed)
            return

    def _next(self, feed: _Feed, epoch: str, seq: int) -> bool:
        """Is (epoch, seq) the message the feed delivers next? The first of a
        channel that had no data is (its epoch is adopted)."""
        if epoch == feed.epoch:
            return seq == feed.pos + 1
        if feed.epoch is None and seq == 1 and epoch not in feed.retired:
            feed.epoch = epoch
            return True
        return False

    def _deliver(self, feed: _Feed, message: Message, seq: int) -> None:
        feed.pos = seq
        feed.local = message.seq
        self.hub.fanout(message)

    def _close(self, feed: _Feed) -> None:
        """The channel was deleted: its epoch is over; a new one starts from nothing."""
        feed.retire()
        feed.epoch = None
        feed.base = feed.local
        feed.pos = 0

    def _fill(self, feed: _Feed) -> Deferred[None]:
        """Read the channel from Redis after the feed's position; fires when done
        (at once if a fill is already running: it will pump what arrives)."""
        if feed.busy:  # once more after it: what it read may be older than the ask
            feed.again = True
            return self._next_fill(feed)
        feed.busy = True
        feed.again = False
        feed.filled = feed.arrived
        waiter = self._next_fill(feed)  # before starting: a fill may fail at once

        def done(result: Any) -> None:
            feed.busy = False
            waiters, feed.waiters = feed.waiters, []
            for w in waiters:
                w.callback(None)
            if isinstance(result, Failure):
                if not result.check(LimitError):
                    log.failure("redis: filling {channel}", result, channel=feed.name)
                return  # Redis is away: _commands_up fills again when it is back
            if feed.again and self._feeds.get(feed.name) is feed:
                self._fill(feed)
                return
            self._pump(feed)

        Deferred.fromCoroutine(self._fill_once(feed)).addBoth(done)
        return waiter

    async def _fill_once(self, feed: _Feed) -> None:
        name = feed.name
        if not feed.known:
            epoch, last, _, _, _ = await self._state(name, "", "", 0, touch=True)
            feed.epoch, feed.pos = epoch, last if epoch is not None else 0
            feed.base = feed.local - feed.pos
            feed.known = True
            return
        epoch, last, _, _, entries = await self._state(
            name, feed.epoch or "", str(feed.pos), self.size, touch=True
        )
        if self._feeds.get(name) is not feed:
            return
        if epoch is None:
            if feed.epoch is not None:  # its data is gone (expired, flushed, restarted)
                self._close(feed)
                self._reset(feed, None)
            return
        seqs = [int(e[0].partition(b"-")[0]) for e in entries]
        if epoch == feed.epoch:
            if (seqs and seqs[0] > feed.pos + 1) or (not seqs and last > feed.pos):
                # what this node missed is no longer in the stream
                feed.pos = seqs[0] - 1 if seqs else last
                self._reset(feed, feed.cursor())
        else:
            # a new epoch (or the first since the channel had none)
            start = seqs[0] - 1 if seqs else last
            had = feed.epoch is not None
            feed.retire()
            feed.epoch = epoch
            feed.base = feed.local - start
            feed.pos = start
            if had or start:
                self._reset(feed, feed.cursor())
        for seq, entry in zip(seqs, entries, strict=True):
            if seq > feed.pos:
                self._deliver(feed, self._message(name, epoch, seq, feed.base + seq, entry), seq)

    def _reset(self, feed: _Feed, cursor: str | None) -> None:
        self.stats.resets += self.hub.reset(feed.name, cursor)


def _honoured(
    cursor: tuple[str, int] | None, epoch: str, last: int, first: int, length: int
) -> bool:
    """A cursor is a position in this history: its epoch, at most the last
    seq, and no older than the message before the first one kept."""
    if cursor is None or cursor[0] != epoch:
        return False
    seq = cursor[1]
    if seq > last:
        return False
    return seq == last or (length > 0 and seq >= first - 1)
