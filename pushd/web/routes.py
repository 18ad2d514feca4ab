"""Every URL of pushd, declared once.

The table below is the only list of URLs: :class:`pushd.web.app.PushdApp`
builds its Klein app from it (what ``twistd pushd`` serves, and what a host
site mounts), and :class:`Router` matches the ``hot`` routes from the same
entries without Klein's router. Both hand the handler's result to the one
renderer (:mod:`pushd.web.render`), so a URL answers the same bytes
whichever way it went.

Paths use Klein's (werkzeug's) syntax; ``<name>`` is one path segment.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    methods: tuple[str, ...]
    path: str
    handler: str  # the PushdApp method that answers it
    # Matched straight from this table, without Klein's router: the URLs a
    # busy daemon answers thousands of times a second.
    hot: bool = False

    @property
    def endpoint(self) -> str:
        """A name unique in the table (Klein's endpoint)."""
        return f"{'+'.join(self.methods)} {self.path}"


ROUTES: tuple[Route, ...] = (
    # operations
    Route(("GET",), "/healthz", "healthz"),
    Route(("GET",), "/readyz", "readyz"),
    Route(("GET",), "/metrics", "metrics"),
    # publishing
    Route(("POST",), "/publish", "publish_batch"),
    Route(("POST",), "/channels/<channel>", "publish_one", hot=True),
    Route(("GET",), "/channels/<channel>", "info"),
    Route(("DELETE",), "/channels/<channel>", "delete"),
    # the five transports
    Route(("GET",), "/channels/<channel>/poll", "poll", hot=True),
    Route(("GET",), "/channels/<channel>/longpoll", "longpoll", hot=True),
    Route(("GET", "POST"), "/channels/<channel>/stream", "stream", hot=True),
    Route(("GET",), "/channels/<channel>/events", "events", hot=True),
    Route(("GET",), "/ws", "websocket"),
    Route(("GET",), "/channels/<channel>/ws", "channel_websocket", hot=True),
    # browser side: pushd.js, its types, demo and status pages
    Route(("GET",), "/", "demo_page"),
    Route(("GET",), "/status", "status_page"),
    Route(("GET",), "/static/<name>", "page_asset"),
    Route(("GET",), "/pushd.js", "client"),
    Route(("GET",), "/pushd.mjs", "client"),
    Route(("GET",), "/pushd.d.ts", "client"),
)


class Router:
    """Matches the hot routes of a table in a few dictionary lookups.

    Only paths that Klein would read the same way are matched: plain ASCII
    with no percent-escape and no empty segment (a trailing slash). Anything
    else is left to Klein (``match`` returns None), which decodes it.
    """

    def __init__(self, routes: tuple[Route, ...]) -> None:
        # (method, segment count) -> [(segments, route)]; None = a parameter
        self._shapes: dict[tuple[bytes, int], list[tuple[tuple[bytes | None, ...], Route]]] = {}
        self._names: dict[Route, tuple[str, ...]] = {}
        for route in routes:
            if not route.hot:
                continue
            parts = route.path.strip("/").split("/")
            segments = tuple(None if p.startswith("<") else p.encode() for p in parts)
            self._names[route] = tuple(p[1:-1] for p in parts if p.startswith("<"))
            for method in route.methods:
                key = (method.encode(), len(segments))
                self._shapes.setdefault(key, []).append((segments, route))

    def match(self, method: bytes, path: bytes) -> tuple[Route, dict[str, str]] | None:
        """The hot route for ``method`` and ``path`` and its parameters, or None."""
        if b"%" in path or not path.isascii() or not path.startswith(b"/"):
            return None
        parts = path[1:].split(b"/")
        candidates = self._shapes.get((method, len(parts)))
        if not candidates:
            return None
        for segments, route in candidates:
            values = []
            for want, got in zip(segments, parts, strict=True):
                if not got:
                    break
                if want is None:
                    values.append(got.decode("ascii"))
                elif want != got:
                    break
            else:
                return route, dict(zip(self._names[route], values, strict=True))
        return None
