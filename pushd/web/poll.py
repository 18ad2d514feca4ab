"""Interval polling: ``GET /channels/{ch}/poll?since=&limit=``.

The answer's ``ETag`` is its cursor. A client that sends it back in
``If-None-Match`` while nothing is new gets ``304`` and no body, so an idle
poll costs a status line and a few headers.

An answer is built whole in memory before it is written, so it carries at
most ``[poll] max_bytes`` of messages (always one): its cursor is then the
last message included, and the client pages on from there.
"""

from __future__ import annotations

from twisted.web.server import Request

from pushd.web import access
from pushd.web.context import Context
from pushd.web.request import arg, header, json_response, number_arg
from pushd.wire import poll_body, poll_page


def etag(cursor: str | None) -> bytes:
    return b'"' + (cursor or "").encode() + b'"'


def _matches(request: Request, tag: bytes) -> bool:
    sent = header(request, "if-none-match")
    if not sent:
        return False
    wanted = tag.decode()
    return any(t.strip().removeprefix("W/") in (wanted, "*") for t in sent.split(","))


async def poll(ctx: Context, request: Request, channel: str) -> bytes:
    since = arg(request, "since") or None
    settings = ctx.settings.poll
    limit = int(number_arg(request, "limit", settings.limit, 1, settings.max_limit))
    page = await access.read(ctx, request, channel, since, limit)
    messages, cursor = poll_page(page.messages, page.cursor, settings.max_bytes)
    tag = etag(cursor)
    request.setHeader(b"ETag", tag)
    if page.reset:
        ctx.registry.resets["poll"] += 1
    elif _matches(request, tag):
        request.setResponseCode(304)
        request.setHeader(b"Cache-Control", b"no-cache")
        return b""
    ctx.registry.deliveries["poll"] += len(messages)
    body = json_response(request, poll_body(messages, cursor, page.reset))
    request.setHeader(b"Cache-Control", b"no-cache")
    return body
