"""HTTP streaming: ``GET``/``POST /channels/{ch}/stream``, NDJSON lines.

With ``Accept-Encoding: gzip`` each line is compressed and followed by a
sync flush, so the client's decompressor yields it at once; that costs a
compressor per connection, the one per-subscriber encoding pushd does, and
only for clients that ask for it.
"""

from __future__ import annotations

import zlib

from twisted.web.resource import Resource
from twisted.web.server import Request

from pushd.heartbeat import Heartbeat
from pushd.model import Message
from pushd.web import access
from pushd.web.context import Context
from pushd.web.request import arg, header
from pushd.web.streamer import TAKEN_OVER, Streamer
from pushd.wire import closed_object, dumps, encode, expired_object, reset_object


class NdjsonStreamer(Streamer):
    name = "stream"
    content_type = b"application/x-ndjson; charset=utf-8"

    def reset_bytes(self, channel: str, cursor: str | None) -> bytes:
        return dumps(reset_object(channel, cursor)) + b"\n"

    def closed_bytes(self, channel: str) -> bytes:
        return dumps(closed_object(channel)) + b"\n"

    def expired_bytes(self, channel: str) -> bytes:
        return dumps(expired_object(channel)) + b"\n"

    def heartbeat_bytes(self) -> bytes:
        return b"\n"


class GzipStreamer(NdjsonStreamer):
    """The same lines through one gzip stream, flushed after each."""

    groupable = False  # its bytes are its own compressor's

    def prepare_headers(self, request: Request) -> None:
        request.setHeader(b"Content-Encoding", b"gzip")
        request.setHeader(b"Vary", b"Accept-Encoding")
        self.compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def write(self, data: bytes) -> None:
        if data:
            c = self.compressor
            super().write(c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))

    def deliver(self, message: Message) -> None:
        line = encode(message, "ndjson")
        self.write(line)
        self.delivered(len(line))

    def end(self) -> None:
        if not self.ended:
            super().write(self.compressor.flush(zlib.Z_FINISH))
        super().end()


def _wants_gzip(request: Request) -> bool:
    accept = (header(request, "accept-encoding") or "").lower()
    for part in accept.split(","):
        name, _, params = part.strip().partition(";")
        if name.strip() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def stream(
    ctx: Context, request: Request, channel: str, heartbeat: Heartbeat
) -> Resource | bytes:
    since = arg(request, "since")
    if request.method == b"HEAD":
        access.allow(ctx, request, "subscribe", channel)
        request.setHeader(b"Content-Type", NdjsonStreamer.content_type)
        return b""
    cls = GzipStreamer if _wants_gzip(request) else NdjsonStreamer
    access.answer_when_live(
        ctx, request, channel, since,
        lambda: cls(ctx, request, channel, "ndjson", heartbeat, ctx.settings.stream.max_bytes),
    )
    return TAKEN_OVER
