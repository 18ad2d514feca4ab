"""What SSE and the NDJSON stream share: one long response fed by a subscription.

A :class:`Streamer` is the broker's subscriber for one response. It sends
the status line and headers at once, then writes each message's cached,
pre-framed bytes through an :class:`~pushd.outlet.Outlet` (bounded queue,
push producer), beats on the transport's shared heartbeat, and ends in one
of four ways: the client leaves (Klein cancels the handler's Deferred), the
channel is deleted (``closed``), the byte budget is spent, or the daemon
drains. Subclasses only say how messages and notices look.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.server import Request

from pushd.model import Message
from pushd.outlet import Heartbeat, Outlet
from pushd.web.common import Context
from pushd.wire import chunk, encode


class Streamer:
    """One streaming response subscribed to one channel."""

    name = "stream"  # the transport, for counters
    content_type = b"application/octet-stream"
    log = Logger()

    def __init__(
        self,
        ctx: Context,
        request: Request,
        channel: str,
        fmt: str,
        heartbeat: Heartbeat,
        max_bytes: int = 0,
    ) -> None:
        self.ctx = ctx
        self.request = request
        self.channel = channel
        self.max_bytes = max_bytes
        self.heartbeat_timer = heartbeat
        self.subscription: Any = None
        self.done: Deferred[None] = Deferred(lambda d: self._lost())
        self.ended = False
        self.body_bytes = 0
        request.setHeader(b"Content-Type", self.content_type)
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")
        self.prepare_headers()
        request.write(b"")  # status line and headers go out now, before any message
        self.framed = bool(request.chunked)
        self.fmt = fmt + "+chunk" if self.framed else fmt
        # Streams outlive the site's idle timeout by design; heartbeats keep
        # proxies awake and a dead peer is found by a failed write.
        request.channel.setTimeout(None)
        transport = request.channel.transport
        self.outlet = Outlet(transport, ctx.settings.limits.queue, self._overflowed, ctx.flusher)
        request.registerProducer(self.outlet, True)
        ctx.registry.opened(self.name, self)
        heartbeat.add(self)

    # -- subclasses --------------------------------------------------------
    def prepare_headers(self) -> None:
        """Set extra headers before they are sent."""

    def reset_bytes(self, channel: str, cursor: str | None) -> bytes:
        raise NotImplementedError

    def closed_bytes(self, channel: str) -> bytes:
        raise NotImplementedError

    def heartbeat_bytes(self) -> bytes:
        raise NotImplementedError

    def goodbye_bytes(self) -> bytes:
        """Written when the daemon drains, before the response ends."""
        return b""

    # -- writing -----------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Frame ``data`` (not pre-framed) as this response's body bytes."""
        if data:
            self.outlet.write(chunk(data) if self.framed else data)

    def deliver(self, message: Message) -> None:
        # Runs once per subscriber per message: the cached bytes, one write.
        data = message.encoded.get(self.fmt) or encode(message, self.fmt)
        self.outlet.write(data)
        self.delivered(len(data))

    def delivered(self, size: int) -> None:
        """Count one delivery of ``size`` body bytes; end past the budget.

        The budget counts what the client accumulates (before any
        compression), which is what it bounds.
        """
        self.ctx.registry.deliveries[self.name] += 1
        self.body_bytes += size
        if self.max_bytes and self.body_bytes >= self.max_bytes:
            self.end()

    def reset(self, channel: str, cursor: str | None) -> None:
        self.ctx.registry.resets[self.name] += 1
        self.write(self.reset_bytes(channel, cursor))

    def closed(self, channel: str) -> None:
        self.subscription = None  # the hub has already ended it
        self.write(self.closed_bytes(channel))
        self.end()

    def heartbeat(self) -> None:
        self.write(self.heartbeat_bytes())

    # -- ending ------------------------------------------------------------
    def subscribe(self, since: str | None) -> Deferred[None]:
        """Subscribe from ``since`` and return the Deferred Klein waits on."""
        sub = self.ctx.broker.subscribe(self.channel, self, since)
        if self.ended:  # ended during the replay itself (budget, slow client)
            sub.cancel()
        else:
            self.subscription = sub
        return self.done

    def end_politely(self) -> None:
        """Drain: say goodbye in this transport's way, then end."""
        self.write(self.goodbye_bytes())
        self.end()

    def end(self) -> None:
        """End the response cleanly; the client reconnects with its cursor."""
        self.outlet.flush()
        if self._stop():
            self.request.unregisterProducer()
            self.done.callback(None)  # Klein finishes the request

    def _overflowed(self) -> None:
        self.ctx.registry.dropped[self.name] += 1
        self.log.warn(
            "dropped a slow {transport} client {peer} on {channel}",
            transport=self.name,
            peer=self.request.getClientAddress(),
            channel=self.channel,
        )
        self._stop()

    def _lost(self) -> None:
        """The client went away (Klein cancelled us)."""
        self._stop()

    def _stop(self) -> bool:
        if self.ended:
            return False
        self.ended = True
        self.ctx.registry.bytes_sent[self.name] += self.outlet.sent
        self.heartbeat_timer.discard(self)
        self.ctx.registry.closed(self.name, self)
        if self.subscription is not None:
            self.subscription.cancel()
            self.subscription = None
        self.outlet.end()
        return True
