"""The HTTP site: a request class that will not hoard a huge body."""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class PushdRequest(Request):
    """Stops storing a request body past the site's ``body_limit``.

    Twisted would otherwise keep any body a client sends; the route then
    answers 413 from the ``body_too_large`` flag, and memory stays bounded.
    """

    body_too_large = False
    _body_seen = 0

    def handleContentChunk(self, data: bytes) -> None:
        self._body_seen += len(data)
        limit = getattr(self.channel.site, "body_limit", None) if self.channel else None
        if limit is not None and self._body_seen > limit:
            self.body_too_large = True
            return
        super().handleContentChunk(data)


class PushdSite(Site):
    requestFactory = PushdRequest
    displayTracebacks = False

    def __init__(self, resource: Resource, body_limit: int, **kw: Any) -> None:
        kw.setdefault("timeout", 600)
        super().__init__(resource, **kw)
        self.body_limit = body_limit

    def log(self, request: Request) -> None:
        """Access logs are off: one line per poll would drown everything else."""
