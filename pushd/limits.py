"""The channel limit: publishing may not create more than ``[limits] max_channels``.

Channels that hold history are what an unbounded stream of publishes to
fresh names would grow without end, so the limit is enforced where a channel
is created by a publish (HTTP, WebSocket, sources alike). A channel made
only by subscribers is already bounded by the connection limits (one
connection, at most ``[websocket] max_subscriptions`` channels) and is freed
when they leave, so subscribing is not refused here: refusing it would have
to happen after a streaming response's headers are out.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet.defer import Deferred, fail

from pushd.broker.memory import MemoryBroker
from pushd.errors import PushdError
from pushd.model import Message


class LimitError(PushdError):
    """A 503 that tells the client when to try again (``Retry-After``)."""

    def __init__(self, code: str, message: str, retry_after: int) -> None:
        super().__init__(503, code, message)
        self.retry_after = retry_after


class LimitedMemoryBroker(MemoryBroker):
    """The memory broker, refusing publishes that would pass ``max_channels``."""

    max_channels = 0  # 0 = unlimited
    retry_after = 5

    def _refuse(self, channels: set[str]) -> Deferred[Any] | None:
        if not self.max_channels:
            return None
        new = {c for c in channels if self.subscribers(c) == 0 and c not in self._channels}
        if new and self.channel_count() + len(new) > self.max_channels:
            return fail(
                LimitError(
                    "too_many_channels",
                    f"this server holds its limit of {self.max_channels} channels",
                    self.retry_after,
                )
            )
        return None

    def publish(self, channel: str, data: Any, event: str = "message") -> Deferred[Message]:
        refused = self._refuse({channel})
        return refused if refused is not None else super().publish(channel, data, event)

    def publish_many(self, items: Sequence[tuple[str, Any, str]]) -> Deferred[list[Message]]:
        refused = self._refuse({item[0] for item in items})
        return refused if refused is not None else super().publish_many(items)
