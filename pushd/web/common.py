"""Small pieces every HTTP route uses: JSON answers, query arguments, bodies.

Kept here so that each transport module reads as parse → act → encode and
none of them re-invents how an error or a number in the query looks.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from pushd.broker.interface import Broker
from pushd.config import Settings
from pushd.errors import PushdError, bad_request
from pushd.fanout import Flusher, Group, Member
from pushd.model import Message
from pushd.registry import Registry
from pushd.wire import dumps

JSON = b"application/json"


def json_response(request: IRequest, body: Any, status: int = 200) -> bytes:
    """Set status and content type; return ``body`` encoded (bytes kept as is)."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON)
    request.setHeader(b"Cache-Control", b"no-store")
    return body if isinstance(body, bytes) else dumps(body)


def error_response(request: IRequest, error: PushdError) -> bytes:
    request.setResponseCode(error.status)
    request.setHeader(b"Content-Type", JSON)
    request.setHeader(b"Cache-Control", b"no-store")
    return error.body()


def arg(request: IRequest, name: str) -> str | None:
    """The first value of query argument ``name``, decoded, or None."""
    values = request.args.get(name.encode())  # type: ignore[attr-defined]
    if not values:
        return None
    try:
        return values[0].decode("utf-8")  # type: ignore[no-any-return]
    except UnicodeDecodeError:
        raise bad_request("bad_argument", f"{name} is not valid UTF-8") from None


def number_arg(
    request: IRequest, name: str, default: float, minimum: float, maximum: float
) -> float:
    """A number from the query, clamped to ``maximum``; 400 if not a number."""
    raw = arg(request, name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise bad_request("bad_argument", f"{name} must be a number") from None
    if not value >= minimum:  # also refuses NaN
        raise bad_request("bad_argument", f"{name} must be at least {minimum:g}")
    return min(value, maximum)


def header(request: IRequest, name: str) -> str | None:
    raw = request.getHeader(name)
    if raw is None:
        return None
    return raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)


def body(request: Request, limit: int) -> bytes:
    """The request body, or 413 when it was (or is) larger than ``limit``."""
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data: bytes = content.read(limit + 1)
    if len(data) > limit:
        raise PushdError(413, "too_large", f"the body is larger than {limit} bytes")
    return data


class Context:
    """What a route needs: the broker, settings, clock and connection registry.

    One instance per daemon, built by ``pushd.tap``; nothing lives in globals.
    """

    def __init__(
        self,
        broker: Broker,
        settings: Settings,
        clock: IReactorTime,
        registry: Registry,
    ) -> None:
        self.broker = broker
        self.settings = settings
        self.clock = clock
        self.registry = registry
        self.flusher = Flusher(clock)  # one end-of-turn send per connection
        # Asked before every subscription and publish (pushd.web.access):
        # authorize(who, action, channel) raises a PushdError to refuse.
        # ``who`` is the HTTP request or the WebSocket connection.
        self.authorize: Callable[[object, str, str], None] = _anyone
        # (channel, wire format) -> the streams that share its frames
        self.groups: dict[tuple[str, str], Group] = {}


def _anyone(who: object, action: str, channel: str) -> None:
    """The authorization hook until keys are configured: everyone may."""


def join_group(
    ctx: Context,
    key: tuple[str, str],
    frame: Callable[[Message], bytes],
    subscription: Any,
    member: Member,
    transport: str,
) -> Group | None:
    """Put ``member`` in the group of ``key`` (channel, wire format); the group, or None.

    The group is made, with its broker watch, on first use. ``subscription``
    (the member's own, just past its replay) hands its delivery over to the
    group's watch; when it cannot (not at the same message), the member
    stays on its own subscription and None is returned.
    """
    group = ctx.groups.get(key)
    if group is None:
        group = Group(frame, ctx.flusher, lambda g: _dissolve(ctx, key, g),
                      ctx.registry.deliveries, transport)
        group.subscription = ctx.broker.watch(key[0], group)
        ctx.groups[key] = group
    if subscription.hand_over(group.subscription):
        group.join(member)
        return group
    if not group.members:
        _dissolve(ctx, key, group)
    return None


def _dissolve(ctx: Context, key: tuple[str, str], group: Group) -> None:
    """A group with no members left stops watching its channel."""
    if ctx.groups.get(key) is group:
        del ctx.groups[key]
    if group.subscription is not None:
        group.subscription.cancel()
        group.subscription = None
