"""The memory broker on a fake clock: ids, history bounds, cursors, replay."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pushd.broker.memory import MemoryBroker
from pushd.errors import PushdError
from tests.helpers import Recorder

sync = SynchronousTestCase()


def make(size: int = 5, ttl: float = 60) -> tuple[MemoryBroker, Clock]:
    clock = Clock()
    clock.advance(1_700_000_000)
    return MemoryBroker(clock, size=size, ttl=ttl, epoch="ep"), clock


def publish(broker: MemoryBroker, channel: str, data: object = "x", event: str = "message"):
    return sync.successResultOf(broker.publish(channel, data, event))


def test_ids_are_epoch_dash_seq_and_increase() -> None:
    broker, _ = make()
    ids = [publish(broker, "a").id for _ in range(3)]
    assert ids == ["ep-1", "ep-2", "ep-3"]


def test_a_fresh_broker_has_a_fresh_epoch() -> None:
    assert MemoryBroker(Clock()).epoch != MemoryBroker(Clock()).epoch


def test_message_fields() -> None:
    broker, clock = make()
    m = publish(broker, "news", {"k": [1]}, "price")
    assert m.as_dict() == {
        "id": "ep-1",
        "channel": "news",
        "event": "price",
        "data": {"k": [1]},
        "time": int(clock.seconds() * 1000),
    }


def test_history_trimmed_by_count() -> None:
    broker, _ = make(size=3)
    for _ in range(5):
        publish(broker, "a")
    page = sync.successResultOf(broker.read("a", None, 100))
    assert [m.id for m in page.messages] == ["ep-3", "ep-4", "ep-5"]
    info = sync.successResultOf(broker.info("a"))
    assert (info.history, info.last_id) == (3, "ep-5")


def test_history_trimmed_by_age() -> None:
    broker, clock = make(size=100, ttl=10)
    publish(broker, "a")
    clock.advance(6)
    publish(broker, "a")
    clock.advance(5)  # the first is now 11 s old, the second 5 s
    page = sync.successResultOf(broker.read("a", None, 100))
    assert [m.id for m in page.messages] == ["ep-2"]


def test_expired_channel_is_freed_by_the_sweep() -> None:
    broker, clock = make(ttl=10)
    broker.startService()
    publish(broker, "a")
    assert broker.channel_count() == 1
    clock.advance(61)
    assert broker.channel_count() == 0
    assert sync.successResultOf(broker.info("a")) is None
    broker.stopService()


def test_channels_without_history_or_subscribers_are_freed() -> None:
    """Throwaway channel names must not accumulate."""
    broker, _ = make()
    for i in range(1000):
        sub = broker.subscribe(f"tmp{i}", Recorder())
        sub.cancel()
    assert broker.channel_count() == 0
    assert broker.subscriber_count() == 0


def resumed(broker: MemoryBroker, channel: str, since: str | None) -> Recorder:
    r = Recorder()
    broker.subscribe(channel, r, since)
    return r


def test_cursor_at_the_last_id_replays_nothing_then_live() -> None:
    broker, _ = make()
    publish(broker, "a")
    r = resumed(broker, "a", "ep-1")
    publish(broker, "a")
    assert r.events == [("message", "ep-2")]


def test_cursor_inside_history_replays_the_rest_in_order() -> None:
    broker, _ = make()
    for _ in range(4):
        publish(broker, "a")
    r = resumed(broker, "a", "ep-2")
    publish(broker, "a")
    assert r.ids == ["ep-3", "ep-4", "ep-5"]


@pytest.mark.parametrize(
    "cursor",
    [
        "ep-1",  # older than history (trimmed)
        "ep-99",  # ahead of the channel
        "other-5",  # another epoch
        "garbage",  # malformed
        "ep-",  # malformed
        "ep-+5",  # malformed
        "ep-٣",  # a non-ASCII digit
        "",  # empty (transports treat as none; the broker resets)
    ],
)
def test_unusable_cursors_get_a_reset_with_the_current_position(cursor: str) -> None:
    broker, _ = make(size=2)
    for _ in range(4):
        publish(broker, "a")
    r = resumed(broker, "a", cursor)
    publish(broker, "a")
    assert r.events == [("reset", "ep-4"), ("message", "ep-5")]


def test_reset_on_a_channel_that_never_had_messages_carries_null() -> None:
    broker, _ = make()
    r = resumed(broker, "new", "ep-3")
    assert r.events == [("reset", None)]


def test_publish_during_replay_is_delivered_after_it_once() -> None:
    """A publish that lands while a subscriber is being replayed to."""
    broker, _ = make(size=10)
    for _ in range(3):
        publish(broker, "a")

    class Publisher(Recorder):
        def deliver(self, message):  # type: ignore[no-untyped-def]
            super().deliver(message)
            if message.id == "ep-2":
                publish(broker, "a")  # lands mid-replay

    r = Publisher()
    broker.subscribe("a", r, "ep-1")
    publish(broker, "a")
    assert r.ids == ["ep-2", "ep-3", "ep-4", "ep-5"]


def test_a_freed_and_reused_channel_does_not_honour_old_cursors() -> None:
    """Ids come from one counter, so a reused name cannot alias old ids."""
    broker, clock = make(size=10, ttl=10)
    publish(broker, "a")
    publish(broker, "a")
    clock.advance(11)
    broker.sweep()
    assert broker.channel_count() == 0
    publish(broker, "b")
    publish(broker, "a")  # the channel is back, with a higher id
    r = resumed(broker, "a", "ep-1")
    assert r.events[0] == ("reset", "ep-4")


def test_delete_tells_subscribers_closed_and_forgets_history() -> None:
    broker, _ = make()
    publish(broker, "a")
    r = resumed(broker, "a", None)
    assert sync.successResultOf(broker.delete("a")) == 1
    assert r.events == [("closed", "a")]
    assert sync.successResultOf(broker.info("a")) is None
    assert broker.subscriber_count() == 0
    assert sync.successResultOf(broker.delete("a")) is None


def test_cancel_stops_delivery_and_frees() -> None:
    broker, _ = make()
    r = Recorder()
    sub = broker.subscribe("a", r)
    assert sync.successResultOf(broker.info("a")).subscribers == 1
    sub.cancel()
    sub.cancel()
    publish(broker, "a")
    assert r.events == []
    assert broker.subscriber_count() == 0


def test_a_subscriber_that_cancels_another_during_fanout() -> None:
    broker, _ = make()
    second = Recorder()
    subs = {}

    class Canceller(Recorder):
        def deliver(self, message):  # type: ignore[no-untyped-def]
            super().deliver(message)
            subs["second"].cancel()

    first = Canceller()
    broker.subscribe("a", first)
    subs["second"] = broker.subscribe("a", second)
    publish(broker, "a")
    publish(broker, "a")
    assert first.ids == ["ep-1", "ep-2"]
    assert len(second.ids) <= 1


def test_read_pages_through_history() -> None:
    broker, _ = make(size=10)
    for _ in range(5):
        publish(broker, "a")
    page = sync.successResultOf(broker.read("a", "ep-1", 2))
    assert ([m.id for m in page.messages], page.cursor) == (["ep-2", "ep-3"], "ep-3")
    page = sync.successResultOf(broker.read("a", "ep-5", 2))
    assert (page.messages, page.cursor, page.reset) == ([], "ep-5", False)
    page = sync.successResultOf(broker.read("a", None, 2))
    assert [m.id for m in page.messages] == ["ep-4", "ep-5"]
    page = sync.successResultOf(broker.read("a", "zz-1", 2))
    assert (page.messages, page.cursor, page.reset) == ([], "ep-5", True)


def test_bad_names_fail_and_store_nothing() -> None:
    broker, _ = make()
    sync.failureResultOf(broker.publish("bad name", "x"), PushdError)
    sync.failureResultOf(broker.publish("a", "x", "reset"), PushdError)
    f = sync.failureResultOf(broker.publish_many([("a", 1, "message"), ("b/c", 2, "message")]))
    assert f.value.status == 400
    assert broker.channel_count() == 0


def test_live_messages_that_overlap_an_async_replay_are_delivered_once() -> None:
    """A clustered broker replays after live messages have started arriving."""
    from pushd.broker.hub import Hub
    from pushd.model import Message

    def m(seq: int) -> Message:
        return Message(f"ep-{seq}", seq, "a", "message", None, 0)

    hub = Hub()
    r = Recorder()
    sub = hub.add("a", r)
    hub.fanout(m(3))
    hub.fanout(m(4))
    assert r.events == []  # held while the replay is outstanding
    sub.start([m(2), m(3)], after=1)
    hub.fanout(m(5))
    assert r.ids == ["ep-2", "ep-3", "ep-4", "ep-5"]


def test_max_channels_refuses_new_channels_only_and_stores_nothing() -> None:
    from pushd.errors import LimitError

    broker = MemoryBroker(Clock(), epoch="ep", max_channels=2, retry_after=9)
    publish(broker, "a")
    publish(broker, "b")
    publish(broker, "a")  # an existing channel is always fine
    f = sync.failureResultOf(broker.publish("c", "x"), LimitError)
    assert (f.value.status, f.value.retry_after) == (503, 9)
    sync.failureResultOf(broker.publish_many([("a", 1, "message"), ("d", 2, "message")]))
    assert sync.successResultOf(broker.info("a")).history == 2  # the batch stored nothing
    assert broker.channel_count() == 2
