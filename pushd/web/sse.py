"""Server-Sent Events: ``GET /channels/{ch}/events``.

The frame format is in :mod:`pushd.wire`; this module picks the cursor
(``Last-Event-ID`` header first, because a browser's automatic reconnect
sends it, then ``?lastEventId=``, then ``?since=``), the envelope mode, and
the notices.
"""

from __future__ import annotations

import random

from twisted.web.resource import Resource
from twisted.web.server import Request

from pushd.heartbeat import Heartbeat
from pushd.web import access
from pushd.web.context import Context
from pushd.web.request import arg, header
from pushd.web.streamer import TAKEN_OVER, Streamer
from pushd.wire import sse_closed, sse_expired, sse_reset, sse_retry


class SseStreamer(Streamer):
    name = "sse"
    content_type = b"text/event-stream; charset=utf-8"

    def reset_bytes(self, channel: str, cursor: str | None) -> bytes:
        return sse_reset(channel, cursor)

    def closed_bytes(self, channel: str) -> bytes:
        return sse_closed(channel)

    def expired_bytes(self, channel: str) -> bytes:
        return sse_expired(channel)

    def heartbeat_bytes(self) -> bytes:
        return b":\n\n"

    def goodbye_bytes(self) -> bytes:
        # Spread reconnects over the retry window so a drained daemon's
        # clients do not all arrive at the next one in the same instant.
        return sse_retry(random.randint(100, max(100, self.ctx.settings.sse.retry)))


def events(
    ctx: Context, request: Request, channel: str, heartbeat: Heartbeat
) -> Resource | bytes:
    since = header(request, "last-event-id") or arg(request, "lastEventId") or arg(request, "since")
    fmt = "sse-env" if arg(request, "envelope") in ("1", "true") else "sse"
    if request.method == b"HEAD":
        access.allow(ctx, request, "subscribe", channel)
        request.setHeader(b"Content-Type", SseStreamer.content_type)
        return b""

    def open_stream() -> SseStreamer:
        streamer = SseStreamer(ctx, request, channel, fmt, heartbeat)
        streamer.write(sse_retry(ctx.settings.sse.retry))
        return streamer

    access.answer_when_live(ctx, request, channel, since, open_stream)
    return TAKEN_OVER
