"""What transports and sources may ask of a broker, and what a subscriber is.

A broker is the only place ids are assigned and history is kept. The memory
broker answers at once; a Redis broker answers later, so every call that may
touch storage returns a Deferred. ``subscribe`` does not: it returns a handle
at once and delivers replay, notices and live messages to the subscriber as
they become available, which suits both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from twisted.internet.defer import Deferred

from pushd.model import Message, Payload


class Subscriber(Protocol):
    """One client's end of a subscription: a transport implements these three.

    They are called on the reactor thread, never re-entered for one
    subscriber, and must not block: a slow client queues, it does not wait.
    """

    def deliver(self, message: Message) -> None:
        """A message after the cursor: replayed or live, in id order, once."""

    def reset(self, channel: str, cursor: str | None) -> None:
        """The cursor could not be honoured; live messages follow from ``cursor``."""

    def closed(self, channel: str) -> None:
        """The channel was deleted; the subscription has ended."""


class Subscription(Protocol):
    channel: str

    def cancel(self) -> None:
        """Stop delivering; safe to call more than once."""

    def when_live(self) -> Deferred[None]:
        """Fires once the replay (or ``reset``) is over and live messages come
        straight through, or once the subscription ended before that. A
        broker that answers later replays on a later turn; meanwhile live
        messages are held, so nothing is lost or doubled at the seam."""

    def hand_over(self, to: Subscription) -> bool:
        """Let the watch ``to`` deliver for this subscription, if both are at
        the same message (False otherwise: nothing changes)."""


@dataclass
class Page:
    """A poll's answer: messages after the cursor, and the cursor to send next."""

    messages: list[Message]
    cursor: str | None
    reset: bool = False


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a keyed publish answers for one item (see ``Broker.publish_keyed``).

    ``replayed``: the item's idempotency key had been used on its channel
    within the history TTL, so nothing was stored and ``id`` is the id the
    first publish with that key got.
    """

    id: str
    channel: str
    replayed: bool = False


@dataclass
class ChannelInfo:
    channel: str
    last_id: str | None
    subscribers: int
    history: int


@dataclass
class BrokerStats:
    """Counters a metrics exporter reads; the broker only increments them."""

    published: int = 0
    resets: int = 0
    channels: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Broker(Protocol):
    stats: BrokerStats

    def publish(
        self, channel: str, data: Payload | Any, event: str = "message"
    ) -> Deferred[Message]:
        """Store and fan out one message. Fails with PushdError on bad names.

        ``data`` is a :class:`~pushd.model.Payload` (what parsing a body
        gives: JSON or text, already encoded) or a Python value made one by
        :func:`~pushd.model.as_payload` (a str is text, anything else JSON).
        What no transport could encode (NaN, a number beyond a double, deep
        nesting...) fails with PushdError 400 ``bad_json`` and stores nothing.
        """

    def publish_many(
        self, items: Sequence[tuple[str, Payload | Any, str]]
    ) -> Deferred[list[Message]]:
        """All or nothing: every item is checked (and encoded) before any is stored."""

    def publish_keyed(
        self, items: Sequence[tuple[str, Payload | Any, str, str | None]]
    ) -> Deferred[list[Receipt]]:
        """``publish_many`` with an idempotency key per item (None: no key).

        An item whose key was already used on its channel within the history
        TTL (by an earlier publish, or an earlier item of this batch) is not
        stored: its receipt carries the first publish's id, ``replayed``.
        The check and the store are one step, so two nodes publishing the
        same key at once store one message. A separate method, so that a
        publish without keys does no extra work.
        """

    def subscribe(
        self, channel: str, subscriber: Subscriber, since: str | None = None
    ) -> Subscription:
        """Replay after ``since`` (or ``reset``), then live; ``None`` is live only.

        Returns the handle at once; the replay may come now or on a later
        turn (``Subscription.when_live`` tells when it is over)."""

    def watch(self, channel: str, subscriber: Subscriber) -> Subscription:
        """Live messages only, not counted as a subscriber: for a fan-out group."""

    def read(self, channel: str, since: str | None, limit: int) -> Deferred[Page]:
        """Up to ``limit`` messages after ``since``; the newest ``limit`` without it."""

    def info(self, channel: str) -> Deferred[ChannelInfo | None]:
        """Channel state, or None when it has neither history nor subscribers."""

    def delete(self, channel: str) -> Deferred[int | None]:
        """Drop history, tell subscribers ``closed``; the number told, None if unknown."""

    def subscribers(self, channel: str) -> int:
        """Subscriptions to ``channel`` held on this process."""

    def subscriber_count(self) -> int:
        """Subscriptions held on this process, all channels."""
