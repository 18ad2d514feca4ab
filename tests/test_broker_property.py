"""Property: whatever the interleaving, a subscriber gets exactly the messages
after its cursor, in order, once, or a reset first when its cursor is gone."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from pushd.broker.memory import MemoryBroker
from tests.helpers import Recorder

CHANNELS = ["a", "b"]
SIZE = 2

ops = st.lists(
    st.one_of(
        # Publishing is listed twice so that histories get long enough to trim.
        st.tuples(st.just("publish"), st.sampled_from(CHANNELS)),
        st.tuples(st.just("publish"), st.sampled_from(CHANNELS)),
        st.tuples(
            st.just("subscribe"),
            st.sampled_from(CHANNELS),
            # None: live only; an int: the n-th id published on this
            # channel; a string: a foreign, future or malformed cursor.
            st.one_of(st.none(), st.integers(0, 6), st.sampled_from(["zz-1", "x", "ep-999"])),
        ),
        st.tuples(st.just("cancel"), st.integers(0, 20)),
    ),
    max_size=60,
)


@settings(max_examples=500, deadline=None)
@given(ops)
def test_every_subscriber_gets_exactly_what_follows_its_cursor(script: list[tuple]) -> None:
    broker = MemoryBroker(Clock(), size=SIZE, ttl=1e9, epoch="ep")
    log: dict[str, list[str]] = {c: [] for c in CHANNELS}  # every id ever published, per channel
    subs: list[tuple[Recorder, object, list]] = []  # recorder, subscription, expected events

    for op in script:
        if op[0] == "publish":
            message = broker.publish(op[1], "x").result
            log[op[1]].append(message.id)
            for _rec, sub, expected in subs:
                if sub.channel == op[1] and sub.active:
                    expected.append(("message", message.id))
        elif op[0] == "subscribe":
            channel, pick = op[1], op[2]
            history = log[channel]
            if isinstance(pick, int):
                cursor = history[pick] if pick < len(history) else None
            else:
                cursor = pick
            if cursor is None:
                expected: list = []
            elif cursor in history and history.index(cursor) >= len(history) - SIZE - 1:
                expected = [("message", i) for i in history[history.index(cursor) + 1 :]]
            else:  # trimmed away, foreign epoch, ahead or malformed
                expected = [("reset", history[-1] if history else None)]
            rec = Recorder()
            sub = broker.subscribe(channel, rec, cursor)
            subs.append((rec, sub, expected))
        elif subs:
            subs[op[1] % len(subs)][1].cancel()

    for rec, _sub, expected in subs:
        assert rec.events == expected
