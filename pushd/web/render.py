"""The one renderer: what a route handler gives, turned into the answer.

A handler returns bytes (the body; status and headers are set on the
request), a resource (a stream that took its connection over, Autobahn's
WebSocket upgrade, the metrics page), or a coroutine / Deferred that gives
either later (the broker may answer later). It raises, or its Deferred fails
with, a :class:`~pushd.errors.PushdError` for the client's mistakes: that
becomes the JSON error, with ``Retry-After`` when it is a limit. Anything
else is twisted.web's 500.

A pending answer whose client goes away is cancelled: a held long-poll
unsubscribes in its canceller. Both ways a request can arrive (the hot
routes' direct dispatch and Klein's router) end here, so an answer is the
same bytes either way.
"""

from __future__ import annotations

from types import CoroutineType
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from pushd.errors import PushdError
from pushd.web.request import error_response


def error(request: IRequest, e: PushdError) -> bytes:
    """The JSON body of ``e``, with its status (and ``Retry-After`` at a
    limit, ``WWW-Authenticate`` on a 401: its ``headers``)."""
    retry_after = getattr(e, "retry_after", None)
    if retry_after is not None:
        request.setHeader(b"Retry-After", b"%d" % retry_after)
    for name, value in e.headers:
        request.setHeader(name, value)
    return error_response(request, e)


def then(d: Deferred[Any], f: Callable[..., Any], *args: Any) -> Any:
    """``f(result, *args)`` now if ``d`` already has a result, else ``d``
    with ``f`` added: a broker that answers at once (the memory broker)
    costs no callback chain, one that answers later works the same."""
    if d.called and not d.paused:  # not paused: its result is not a Deferred
        result = d.result
        if type(result) is not Failure:
            return f(result, *args)
    return d.addCallback(f, *args)


def answer(request: Any, handler: Callable[..., Any], kwargs: dict[str, str]) -> bytes | int:
    """Call ``handler(request, **kwargs)`` and render what it gives."""
    try:
        result = handler(request, **kwargs)
    except PushdError as e:
        return error(request, e)
    return render(request, result)


def render(request: Any, result: Any) -> bytes | int:
    """``result`` as twisted.web's ``render`` returns it: bytes or NOT_DONE_YET."""
    if isinstance(result, bytes):
        return result
    if IResource.providedBy(result):
        return result.render(request)  # type: ignore[no-any-return]
    if isinstance(result, CoroutineType):
        result = Deferred.fromCoroutine(result)
    if not isinstance(result, Deferred):
        raise TypeError(f"a route gave {result!r}")
    return _settle(request, result)


def _settle(request: Any, d: Deferred[Any]) -> bytes | int:
    """Render ``d``'s result now if it has one, else when it comes."""
    if d.called and not d.paused:
        # The broker answered at once (the memory broker does): take its
        # result without a callback chain. A failure goes the way below,
        # whose callback consumes it (else it is logged as unhandled).
        result = d.result
        if type(result) is not Failure:  # not paused: nor a Deferred
            return render(request, result)
    now: list[Any] = []
    waiting: list[bool] = []
    finished: list[bool] = []

    def settle(result: Any) -> None:
        if not waiting:
            now.append(result)
        elif not finished:  # else the client left: nothing to write to
            _write_later(request, result)

    d.addBoth(settle)
    if now:  # the broker answered at once
        result = now[0]
        if isinstance(result, Failure):
            if result.check(PushdError):
                return error(request, result.value)
            result.raiseException()
        return render(request, result)
    waiting.append(True)

    def gone(_: Failure) -> None:
        finished.append(True)
        d.cancel()

    when_gone = getattr(request, "when_gone", None)  # pushd's own server
    if when_gone is not None:
        when_gone(gone)
    else:
        request.notifyFinish().addErrback(gone)
    return NOT_DONE_YET


def _write_later(request: Any, result: Any) -> None:
    if isinstance(result, Failure):
        if result.check(CancelledError):
            return
        if not result.check(PushdError):
            request.processingFailed(result)
            return
        result = error(request, result.value)
    body = render(request, result)
    if body is NOT_DONE_YET:
        return
    respond = getattr(request, "respond", None)
    if respond is not None:  # pushd's own server: head and body in one send
        respond(body)
        return
    request.setHeader(b"Content-Length", b"%d" % len(body))
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


class Answer(Resource):
    """A route's answer inside Klein: Klein routes, the renderer answers."""

    isLeaf = True

    def __init__(self, handler: Callable[..., Any], kwargs: dict[str, str]) -> None:
        super().__init__()
        self.handler = handler
        self.kwargs = kwargs

    def render(self, request: Any) -> bytes | int:
        return answer(request, self.handler, self.kwargs)
