"""The URLs hit thousands of times a second, dispatched without Klein's router.

``POST /channels/{ch}`` (publish) and ``GET /channels/{ch}/events``,
``/stream`` and ``/ws`` (subscribe; WebSocket handshakes come in storms
when clients reconnect after a restart) are most of a busy daemon's
requests. Through Klein
each one binds a werkzeug URL map, matches it, and runs through several
Deferreds, ``maybeDeferred`` calls and callbacks before reaching the
handler: measured with ``python -m bench`` (2,000 channels, one subscriber
each, publishing at full speed), that was about a third of a publish's CPU.

:class:`FastLane` sits in front of the Klein resource. For exactly those
shapes of URL it calls the same route methods of
:class:`~pushd.web.app.PushdApp` Klein would call, with the same error
handler; anything else, including any path it is not sure how Klein would
decode (percent-escapes, bytes beyond ASCII, a trailing slash), goes to
Klein unchanged. So the
URL table stays in ``app.py`` and the answers are the same bytes, except
that a publish's JSON answer carries ``Content-Length`` instead of being
chunked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from pushd.errors import PushdError

if TYPE_CHECKING:
    from pushd.web.app import PushdApp

PREFIX = b"/channels/"


class FastLane(Resource):
    """Publish and subscribe straight to their handlers; the rest to ``inner``."""

    isLeaf = True

    def __init__(self, app: PushdApp, inner: Resource) -> None:
        super().__init__()
        self.app = app
        self.inner = inner

    def render(self, request: Request) -> bytes | int:
        path = request.path
        if path.startswith(PREFIX) and b"%" not in path and path.isascii():
            parts = path[len(PREFIX) :].split(b"/")
            method = request.method
            if method == b"POST" and len(parts) == 1 and parts[0]:
                return self._answer(request, self.app.publish_one, parts[0])
            if method == b"GET" and len(parts) == 2 and parts[0]:
                if parts[1] == b"events":
                    return self._answer(request, self.app.events, parts[0])
                if parts[1] == b"stream":
                    return self._answer(request, self.app.stream, parts[0])
                if parts[1] == b"ws":
                    return self._answer(request, self.app.channel_websocket, parts[0])
        return self.inner.render(request)  # type: ignore[no-any-return]

    def _answer(
        self, request: Request, route: Callable[[Request, str], Any], channel: bytes
    ) -> bytes | int:
        """Run ``route`` as Klein would and render what it gives.

        A route returns bytes, a resource (a stream that took its connection
        over, or Autobahn's, which takes it over for a WebSocket), or a
        coroutine; the memory broker answers a coroutine at once,
        so its bytes are returned here too. A ``PushdError`` becomes the
        app's JSON error; any other exception is twisted.web's 500.
        """
        try:
            result = route(request, channel.decode("ascii"))
        except PushdError:
            return self.app.pushd_error(request, Failure())
        if isinstance(result, bytes):
            return result
        if IResource.providedBy(result):  # Autobahn's is not a Resource subclass
            return result.render(request)  # type: ignore[no-any-return]
        return self._settle(request, Deferred.fromCoroutine(result))

    def _settle(self, request: Request, d: Deferred[bytes]) -> bytes | int:
        now: list[Any] = []
        later: list[bool] = []
        gone: list[bool] = []

        def settle(result: bytes | Failure) -> None:
            if isinstance(result, Failure) and result.check(PushdError):
                result = self.app.pushd_error(request, result)
            if not later:
                now.append(result)
            elif gone:
                return  # the client left; nothing to write to
            elif isinstance(result, Failure):
                request.processingFailed(result)
            else:
                request.setHeader(b"Content-Length", b"%d" % len(result))
                request.write(result)
                request.finish()

        d.addBoth(settle)
        if now:
            result = now[0]
            if isinstance(result, Failure):
                result.raiseException()
            return result  # type: ignore[no-any-return]
        later.append(True)  # a broker that answers later (Redis)
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        return NOT_DONE_YET
