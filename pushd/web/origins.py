"""Who may use pushd from a browser page: one policy for CORS and WebSocket,
and one for the ``Host`` a loopback client may name (DNS rebinding).

``allowed_origins = []`` allows only same-origin pages; ``["*"]`` any page.
Requests without ``Origin`` (curl, servers, native clients) are always served.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from twisted.web.resource import Resource
from twisted.web.server import Request

from pushd.errors import PushdError
from pushd.web.clients import is_loopback, peer_of, proxied
from pushd.web.request import error_response

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




def _host_name(host: str) -> str:
    """The name part of a ``Host`` header, lower-cased: no port, no brackets."""
    host = host.strip().lower()
    if host.startswith("["):  # [v6]:port
        return host[1 : host.find("]")] if "]" in host else host[1:]
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() else host


class HostPolicy:
    """DNS rebinding: which ``Host`` a loopback client may name.

    A page on ``evil.example`` whose name is made to resolve to 127.0.0.1
    reaches a loopback pushd as *same-origin*: the browser sends ``Origin``
    and ``Host`` of ``evil.example`` and trusts the answer. Only the ``Host``
    header tells such a request from a real local one, so a request from a
    loopback peer, not through a proxy (which names the real client in its
    own headers), must name a loopback host or one in ``allowed_hosts``.
    Requests from other peers are not this attack and are not checked.
    """

    def __init__(self, allowed: list[str]) -> None:
        self.allowed = {_host_name(h) for h in allowed}
        self._seen: dict[bytes | str, bool] = {}

    def allows(self, peer: str, host: bytes | str | None, proxied: bool) -> bool:
        if host is None or proxied or not is_loopback(peer):
            return True
        known = self._seen.get(host)
        if known is None:  # a daemon sees few Host values: judge each once
            if len(self._seen) >= 1024:
                self._seen.clear()
            text = host.decode("latin-1") if isinstance(host, bytes) else host
            name = _host_name(text)
            known = self._seen[host] = (
                name == "localhost" or is_loopback(name) or name in self.allowed
            )
        return known


# A listed page may send what a client of pushd sends (Idempotency-Key: a
# page retrying a publish), and read the headers pushd answers with.
PREFLIGHT_HEADERS = (
    b"Content-Type, Last-Event-ID, If-None-Match, Authorization, Idempotency-Key"
)
EXPOSED_HEADERS = b"ETag, Idempotent-Replayed"
METHODS = b"GET, POST, DELETE, OPTIONS"


def guard(request: Any, policy: OriginPolicy, hosts: HostPolicy) -> bytes | None:
    """What every request passes before its route: the ``Host`` check, CORS
    headers for a listed origin, and preflights. The answer when the request
    ends here (refused, or a preflight answered), else None."""
    get = request.getHeader
    if not hosts.allows(peer_of(request), get(b"host"), proxied(request)):
        return error_response(
            request,
            PushdError(
                403,
                "forbidden",
                "this Host is not a loopback name; list it in allowed_hosts "
                "(DNS rebinding protection)",
            ),
        )
    raw_origin = get(b"origin")
    if raw_origin is None:
        listed = False
    else:
        origin = raw_origin.decode("latin-1")
        listed = policy.listed_origin(origin)
        if not listed and request.method in (b"POST", b"DELETE"):
            # A page may send a "simple" POST to any address without asking
            # first (no preflight): refused before anything reaches the broker.
            host = get(b"host")
            if not policy.same_origin(origin, host.decode("latin-1") if host else None):
                return error_response(
                    request,
                    PushdError(
                        403,
                        "forbidden",
                        "a page of another origin may not POST or DELETE here; "
                        "list it in allowed_origins",
                    ),
                )
        if listed:
            value = b"*" if policy.any else origin.encode("latin-1")
            request.setHeader(b"Access-Control-Allow-Origin", value)
            request.setHeader(b"Vary", b"Origin")
            request.setHeader(b"Access-Control-Expose-Headers", EXPOSED_HEADERS)
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
    return None


class CorsResource(Resource):
    """:func:`guard`, then ``inner``."""

    isLeaf = True

    def __init__(
        self, inner: Resource, policy: OriginPolicy, hosts: HostPolicy | None = None
    ) -> None:
        super().__init__()
        self.inner = inner
        self.policy = policy
        self.hosts = hosts or HostPolicy([])

    def render(self, request: Request) -> bytes | int:
        answer = guard(request, self.policy, self.hosts)
        if answer is not None:
            return answer
        return self.inner.render(request)  # type: ignore[no-any-return]
