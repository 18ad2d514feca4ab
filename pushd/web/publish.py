"""The publish API: POST a message, POST a batch, GET and DELETE a channel."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.web.server import Request

from pushd.broker.interface import Receipt
from pushd.errors import PushdError, bad_request
from pushd.model import (
    Message,
    Payload,
    check_channel,
    check_event,
    check_idempotency_key,
    json_payload,
    loads_json,
    parse_body,
)
from pushd.web import access
from pushd.web.context import Context
from pushd.web.render import then
from pushd.web.request import arg, body, header, json_response


def publish_one(ctx: Context, request: Request, channel: str) -> Deferred[bytes]:
    check_channel(channel)
    event = check_event(arg(request, "event"))
    key = request.getHeader(b"idempotency-key")
    if key is not None:
        key = check_idempotency_key(key.decode("latin-1"))
    limit = ctx.settings.limits.message_size
    payload = parse_body(body(request, limit), header(request, "content-type"))
    if key is not None:
        keyed = access.publish_keyed(ctx, request, [(channel, payload, event, key)])
        return then(keyed, _published_keyed, ctx, request, channel)
    # Callbacks, not a coroutine: at thousands of publishes a second the
    # coroutine's machinery was a tenth of the request's cost.
    d = access.publish(ctx, request, [(channel, payload, event)])
    return then(d, _published, ctx, request, channel)


def _published_keyed(
    receipts: list[Receipt], ctx: Context, request: Request, channel: str
) -> bytes:
    """The answer of the first publish with the key (same id), marked when a replay."""
    receipt = receipts[0]
    if receipt.replayed:
        request.setHeader(b"Idempotent-Replayed", b"true")
    body = b'{"id":"%s","channel":"%s","subscribers":%d}' % (
        receipt.id.encode(), channel.encode(), ctx.broker.subscribers(channel),
    )
    return json_response(request, body, 201)


def _published(messages: list[Message], ctx: Context, request: Request, channel: str) -> bytes:
    body = b'{"id":"%s","channel":"%s","subscribers":%d}' % (
        messages[0].id.encode(), channel.encode(), ctx.broker.subscribers(channel),
    )
    return json_response(request, body, 201)


def _batch_items(
    raw: bytes, message_size: int
) -> list[tuple[str, Payload, str, str | None]]:
    """The items of a batch, each item's data encoded as JSON (a string in a
    batch is a JSON string: on SSE it goes out as ``data: "abc"``), with its
    idempotency key or None."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("bad_utf8", "the body is not valid UTF-8") from None
    items = loads_json(text)
    if not isinstance(items, list) or not items:
        raise bad_request("bad_batch", "the body must be a non-empty JSON array")
    out = []
    for i, item in enumerate(items):
        where = f"item {i}"
        if not isinstance(item, dict) or "channel" not in item or "data" not in item:
            raise bad_request("bad_batch", f"{where} needs channel and data")
        unknown = set(item) - {"channel", "data", "event", "idempotency_key"}
        if unknown:
            raise bad_request("bad_batch", f"{where} has unknown key {sorted(unknown)[0]!r}")
        try:
            channel = check_channel(item["channel"])
            event = check_event(item.get("event"))
            key = item.get("idempotency_key")
            if key is not None:
                check_idempotency_key(key)
        except PushdError as e:
            raise bad_request(e.code, f"{where}: {e.message}") from None
        payload = json_payload(item["data"], checked=True)
        if len(payload.json) > message_size:
            raise PushdError(413, "too_large", f"{where} is larger than {message_size} bytes")
        out.append((channel, payload, event, key))
    return out


async def publish_batch(ctx: Context, request: Request) -> bytes:
    limits = ctx.settings.limits
    items = _batch_items(body(request, limits.batch_size), limits.message_size)
    answered: list[Message] | list[Receipt]
    if any(key is not None for _, _, _, key in items):
        # an item whose key was used is answered with its first id, not stored
        answered = await access.publish_keyed(ctx, request, items)
    else:
        answered = await access.publish(ctx, request, [(c, p, e) for c, p, e, _ in items])
    return json_response(
        request,
        {"messages": [{"id": m.id, "channel": m.channel} for m in answered]},
        201,
    )


async def info(ctx: Context, request: Request, channel: str) -> bytes:
    access.allow(ctx, request, "manage", channel)
    found = await ctx.broker.info(channel)
    if found is None:
        raise PushdError(404, "not_found", f"channel {channel!r} has no history and no subscribers")
    return json_response(
        request,
        {
            "channel": found.channel,
            "last_id": found.last_id,
            "subscribers": found.subscribers,
            "history": found.history,
        },
    )


async def delete(ctx: Context, request: Request, channel: str) -> bytes:
    access.allow(ctx, request, "manage", channel)
    told = await ctx.broker.delete(channel)
    if told is None:
        raise PushdError(404, "not_found", f"channel {channel!r} does not exist")
    return json_response(request, {"channel": channel, "deleted": True, "subscribers": told})
