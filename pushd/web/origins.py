"""Who may use pushd from a browser page: one policy for CORS and WebSocket.

``allowed_origins = []`` allows only same-origin pages; ``["*"]`` any page.
Requests without ``Origin`` (curl, servers, native clients) are always served.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from twisted.web.resource import Resource
from twisted.web.server import Request

from pushd.errors import PushdError
from pushd.web.common import error_response, header

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _netloc(scheme: str, host: str) -> str:
    """``host[:port]`` lower-cased, with the scheme's default port dropped."""
    host = host.strip().lower()
    default = _DEFAULT_PORTS.get(scheme)
    if default and host.endswith(f":{default}"):
        host = host[: -len(f":{default}")]
    return host


class OriginPolicy:
    def __init__(self, allowed: list[str]) -> None:
        self.any = "*" in allowed
        self.listed = {o.rstrip("/").lower() for o in allowed if o != "*"}

    def listed_origin(self, origin: str) -> bool:
        return self.any or origin.rstrip("/").lower() in self.listed

    def same_origin(self, origin: str, host: str | None) -> bool:
        """Whether ``origin`` names this server, as the client reached it."""
        if not host:
            return False
        parts = urlsplit(origin)
        if not parts.scheme or not parts.netloc:
            return False
        return _netloc(parts.scheme, parts.netloc) == _netloc(parts.scheme, host)

    def allows(self, origin: str | None, host: str | None) -> bool:
        """May a page of ``origin`` open a WebSocket here?"""
        if origin is None:
            return True
        return self.listed_origin(origin) or self.same_origin(origin, host)


PREFLIGHT_HEADERS = b"Content-Type, Last-Event-ID, If-None-Match"
METHODS = b"GET, POST, DELETE, OPTIONS"


class CorsResource(Resource):
    """Adds CORS headers for listed origins, answers preflights, then defers."""

    isLeaf = True

    def __init__(self, inner: Resource, policy: OriginPolicy) -> None:
        super().__init__()
        self.inner = inner
        self.policy = policy

    def render(self, request: Request) -> bytes | int:
        origin = header(request, "origin")
        listed = origin is not None and self.policy.listed_origin(origin)
        if listed:
            assert origin is not None
            value = b"*" if self.policy.any else origin.encode("latin-1")
            request.setHeader(b"Access-Control-Allow-Origin", value)
            request.setHeader(b"Vary", b"Origin")
            request.setHeader(b"Access-Control-Expose-Headers", b"ETag")
        if request.method == b"OPTIONS":
            if not listed:
                return error_response(
                    request,
                    PushdError(403, "forbidden_origin", "this origin is not in allowed_origins"),
                )
            request.setResponseCode(204)
            request.setHeader(b"Access-Control-Allow-Methods", METHODS)
            request.setHeader(b"Access-Control-Allow-Headers", PREFLIGHT_HEADERS)
            request.setHeader(b"Access-Control-Max-Age", b"600")
            return b""
        return self.inner.render(request)  # type: ignore[no-any-return]
