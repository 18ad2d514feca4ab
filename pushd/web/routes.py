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


@dataclass(frozen=True, eq=False)  # each route is itself: hashed by identity, cheaply
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
    """Matches the hot routes of a table in a dictionary lookup or two.

    A hot route has at most one parameter, a whole path segment: its path is
    a prefix, the parameter, and a suffix (``/channels/`` + ``<channel>`` +
    ``/poll``). Only paths that Klein would read the same way are matched:
    plain ASCII with no percent-escape and no empty parameter. Anything else
    is left to Klein (``match`` returns None), which decodes it.
    """

    def __init__(self, routes: tuple[Route, ...]) -> None:
        self._exact: dict[tuple[bytes, bytes], Route] = {}
        # (method, prefix, suffix) -> (route, parameter name)
        self._shaped: dict[tuple[bytes, bytes, bytes], tuple[Route, str]] = {}
        prefixes: list[bytes] = []
        for route in routes:
            if not route.hot:
                continue
            head, sep, tail = route.path.partition("<")
            if not sep:
                for method in route.methods:
                    self._exact[(method.encode(), route.path.encode())] = route
                continue
            name, _, suffix = tail.partition(">")
            if "<" in suffix or not head.endswith("/") or suffix[:1] not in ("", "/"):
                raise ValueError(f"a hot route has one parameter, a whole segment: {route.path}")
            if head.encode() not in prefixes:
                prefixes.append(head.encode())
            for method in route.methods:
                self._shaped[(method.encode(), head.encode(), suffix.encode())] = (route, name)
        self._prefixes = tuple(prefixes)

    def match(self, method: bytes, path: bytes) -> tuple[Route, dict[str, str]] | None:
        """The hot route for ``method`` and ``path`` and its parameters, or None."""
        if self._exact:
            route = self._exact.get((method, path))
            if route is not None:
                return route, {}
        for prefix in self._prefixes:
            if path.startswith(prefix):
                rest = path[len(prefix) :]
                cut = rest.find(b"/")
                value, suffix = (rest, b"") if cut < 0 else (rest[:cut], rest[cut:])
                found = self._shaped.get((method, prefix, suffix))
                if found is None or not value or b"%" in value or not value.isascii():
                    continue
                route, name = found
                return route, {name: value.decode("ascii")}
        return None
