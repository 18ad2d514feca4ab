"""Fan-out groups: a broker watch that delivers for many streams, and its sweep.

The hub side (``watch``, ``hand_over``) keeps what a subscriber sees and
what ``subscribers`` counts; the group side sends every member every frame
once, in order, a slice of members per reactor turn.
"""

from __future__ import annotations

import re
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from pushd.broker.memory import MemoryBroker
from pushd.fanout import Flusher, Group
from pushd.outlet import Outlet
from tests.clients import RawHTTP, get_request
from tests.clients import subscribed as until_subscribed
from tests.helpers import Recorder

sync = SynchronousTestCase()


def make() -> tuple[MemoryBroker, Clock]:
    clock = Clock()
    clock.advance(1_700_000_000)
    return MemoryBroker(clock, size=5, ttl=60, epoch="ep"), clock


def publish(broker: MemoryBroker, channel: str, data: Any = "x") -> Any:
    return sync.successResultOf(broker.publish(channel, data))


# -- the broker side ------------------------------------------------------------
def test_a_handed_over_subscription_is_counted_but_no_longer_pushed_to() -> None:
    broker, _ = make()
    publish(broker, "a")
    own, watcher = Recorder(), Recorder()
    sub = broker.subscribe("a", own)
    watch = broker.watch("a", watcher)
    assert broker.subscribers("a") == 1  # a watch is not a subscriber
    assert sub.hand_over(watch)
    publish(broker, "a")
    assert (own.ids, watcher.ids) == ([], ["ep-2"])
    assert broker.subscribers("a") == 1 and broker.subscriber_count() == 1

    # delete: the subscriber is told, then the watch
    assert sync.successResultOf(broker.delete("a")) == 1
    assert own.events[-1] == ("closed", "a") and watcher.events[-1] == ("closed", "a")


def test_hand_over_is_refused_unless_both_are_at_the_same_message() -> None:
    broker, _ = make()
    watch = broker.watch("a", Recorder())
    publish(broker, "a")  # the watch has seen ep-1
    behind = broker.hub.add("a", Recorder())
    behind.start(after=0)  # a subscription that has not had ep-1
    assert not behind.hand_over(watch)
    publish(broker, "a")
    assert behind.subscriber.ids == ["ep-2"]  # the hub still delivers to it
    other = broker.watch("b", Recorder())
    assert not broker.subscribe("a", Recorder()).hand_over(other)  # another channel


def test_the_last_subscriber_leaving_frees_the_channel_though_a_watch_remains() -> None:
    broker, _ = make()
    sub = broker.subscribe("a", Recorder())
    watch = broker.watch("a", Recorder())
    assert sub.hand_over(watch)
    sub.cancel()
    assert broker.subscribers("a") == 0
    assert broker.channel_count() == 0  # no history, no subscriber: freed
    watch.cancel()
    watch.cancel()  # twice is fine


# -- the group's sweep ------------------------------------------------------------
class Member:
    """A stream as a group sees it: a position, an outlet, ``pulled``."""

    def __init__(self, outlet: Outlet, plain: bool = True) -> None:
        self.outlet = outlet
        self.direct = outlet if plain else None
        self.pos = 0
        self.max_bytes = self.body_bytes = 0
        self.ended_at: int | None = None  # body_bytes when the budget was spent
        self.pulled_counts: list[int] = []

    def spent(self, size: int) -> None:
        self.body_bytes += size
        if self.body_bytes >= self.max_bytes:
            self.ended_at = self.body_bytes

    def pulled(self, data: bytes, count: int) -> None:
        self.pulled_counts.append(count)
        self.outlet.write_now(data)


class Frame:
    """Just what Group.deliver reads of a message."""

    def __init__(self, data: bytes) -> None:
        self.encoded = {"sse": data}


def turn(clock: Clock) -> None:
    """One reactor turn: what is due now runs; what it schedules waits for the next."""
    due = [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]
    for call in due:
        func, args, kw = call.func, call.args, call.kw
        call.cancel()
        func(*args, **kw)


def setup(n: int, per_turn: int = 2) -> tuple[Clock, Group, list[Member], dict[str, int]]:
    clock = Clock()
    flusher = Flusher(clock, per_turn=per_turn)
    counts = {"sse": 0}
    emptied: list[Group] = []
    group = Group(lambda m: m.encoded["sse"], flusher, emptied.append, counts, "sse")
    members = [Member(Outlet(StringTransport(), 1024, flusher=flusher)) for _ in range(n)]
    for m in members:
        group.join(m)
    return clock, group, members, counts


def wire(m: Member) -> bytes:
    return m.outlet.transport.value()  # type: ignore[attr-defined,no-any-return]


def test_every_member_gets_every_frame_once_in_order_a_slice_per_turn() -> None:
    clock, group, members, counts = setup(5)
    group.deliver(Frame(b"1"))  # type: ignore[arg-type]
    turn(clock)
    assert [wire(m) for m in members] == [b"1", b"1", b"", b"", b""]
    group.deliver(Frame(b"2"))  # type: ignore[arg-type]  # published mid-sweep
    turn(clock)
    assert [wire(m) for m in members] == [b"1", b"1", b"12", b"12", b""]
    late = Member(Outlet(StringTransport(), 1024))
    group.join(late)  # joins now: only what comes next
    turn(clock)
    turn(clock)
    turn(clock)
    assert [wire(m) for m in members] == [b"12"] * 5
    assert wire(late) == b""
    assert group.frames == [] and clock.getDelayedCalls() == []  # all had it: dropped
    assert counts["sse"] == 10


def test_a_member_writing_its_own_bytes_takes_the_group_frames_first() -> None:
    clock, group, members, _ = setup(2)
    group.deliver(Frame(b"m1 "))  # type: ignore[arg-type]
    a = members[0]
    group.take(a)  # what a stream does before a heartbeat or notice
    a.outlet.write(b"beat ")
    group.deliver(Frame(b"m2 "))  # type: ignore[arg-type]
    turn(clock)
    turn(clock)
    assert wire(a) == b"m1 beat m2 "
    assert wire(members[1]) == b"m1 m2 "


def test_a_paused_member_queues_within_its_bound_then_is_dropped() -> None:
    clock, group, members, _ = setup(2)
    dropped: list[int] = []
    slow = members[1]
    slow.outlet.on_overflow = lambda: dropped.append(1)
    slow.outlet.limit = 5
    slow.outlet.pauseProducing()
    group.deliver(Frame(b"abc"))  # type: ignore[arg-type]
    turn(clock)
    assert wire(slow) == b"" and slow.outlet.queued == 3 and not dropped
    group.deliver(Frame(b"def"))  # type: ignore[arg-type]
    turn(clock)
    assert dropped == [1] and slow.outlet.ended
    assert wire(members[0]) == b"abcdef"  # the other one is not held up


def test_a_member_without_an_outlet_for_the_group_is_handed_its_frames() -> None:
    clock, group, members, counts = setup(1)
    members[0].direct = None
    for data in (b"a", b"b"):
        group.deliver(Frame(data))  # type: ignore[arg-type]
    turn(clock)
    assert members[0].pulled_counts == [2] and wire(members[0]) == b"ab"
    assert counts["sse"] == 0  # such a member counts its own deliveries


def test_the_sweep_keeps_a_byte_budget_and_ends_the_member_once_spent() -> None:
    clock, group, members, counts = setup(2)
    budgeted, free = members
    budgeted.max_bytes = 5
    group.deliver(Frame(b"abc"))  # type: ignore[arg-type]
    turn(clock)
    assert budgeted.ended_at is None and budgeted.body_bytes == 3
    group.deliver(Frame(b"de"))  # type: ignore[arg-type]
    turn(clock)
    assert budgeted.ended_at == 5 and wire(budgeted) == b"abcde"  # ended after that send
    assert free.ended_at is None and free.body_bytes == 0  # no budget: nothing kept
    assert counts["sse"] == 4


def test_a_member_that_leaves_mid_sweep_is_passed_by() -> None:
    clock, group, members, counts = setup(4)
    group.deliver(Frame(b"1"))  # type: ignore[arg-type]
    turn(clock)  # the first two
    group.leave(members[3])  # not reached yet
    turn(clock)
    assert [wire(m) for m in members] == [b"1", b"1", b"1", b""]
    assert counts["sse"] == 3
    group.take(members[3])  # what a stream ending does: nothing is left for it
    assert wire(members[3]) == b""


def test_the_last_member_leaving_empties_the_group() -> None:
    clock = Clock()
    emptied: list[Group] = []
    group = Group(lambda m: m.encoded["sse"], Flusher(clock), emptied.append, {"sse": 0}, "sse")
    m = Member(Outlet(StringTransport(), 1024))
    group.join(m)
    group.leave(m)
    assert emptied == [group]


# -- over real sockets -----------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_many_streams_get_every_message_once_in_order_across_slices(running: Any) -> None:
    """150 SSE streams (three slices of the flusher) and publishes landing mid-sweep."""
    n = 150
    conns = [await RawHTTP.open(running.port, get_request("/channels/many/events"))
             for _ in range(n)]
    try:
        await until_subscribed(running.broker, "many", n)
        assert len(running.daemon.context.groups) == 1  # one group serves them all
        ids = [(await running.broker.publish("many", i)).id for i in range(3)]
        await deferLater(reactor, 0, lambda: None)  # one slice has gone out
        ids += [(await running.broker.publish("many", i)).id for i in range(3, 5)]
        last = b"id: " + ids[-1].encode()
        for conn in conns:
            await conn.contains(last)
        for conn in conns:
            seen = re.findall(rb"id: (\S+)\n", conn.data)
            assert [s.decode() for s in seen] == ids
        assert running.registry.deliveries["sse"] == 5 * n
    finally:
        for conn in conns:
            conn.close()
