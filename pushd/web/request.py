"""Reading a request and writing a JSON answer: query arguments, headers, bodies.

Kept here so that each transport module reads as parse → act → encode and
none of them re-invents how an error or a number in the query looks.
"""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest
from twisted.web.server import Request

from pushd.errors import PushdError, bad_request
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
    raw = getattr(request, "body", None)  # pushd's own server has it as bytes
    if type(raw) is bytes:
        if len(raw) > limit:
            raise PushdError(413, "too_large", f"the body is larger than {limit} bytes")
        return raw
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data: bytes = content.read(limit + 1)
    if len(data) > limit:
        raise PushdError(413, "too_large", f"the body is larger than {limit} bytes")
    return data
