"""The routes' handlers, and the Klein app built from the one URL table.

Each handler parses, calls one module, and returns; the URLs themselves are
declared once, in :mod:`pushd.web.routes`, and what a handler returns is
rendered in one place (:mod:`pushd.web.render`). Every :class:`PushdApp`
carries its own broker and settings (no globals); transports live in their
own modules and never import each other.
"""

from __future__ import annotations

from typing import Any, Callable

from klein import Klein
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from pushd.errors import PushdError
from pushd.heartbeat import Heartbeat
from pushd.server import HttpConnection, HttpRequest, HttpServer, WebBridge
from pushd.server.exchange import Exchange
from pushd.web import longpoll, ndjson, pages, poll, publish, sse, ws
from pushd.web.context import Context
from pushd.web.origins import CorsResource, HostPolicy, OriginPolicy, guard
from pushd.web.render import Answer, answer, error, render
from pushd.web.request import error_response, json_response
from pushd.web.routes import ROUTES, Route, Router


class PushdApp:
    """pushd's routes for one daemon (or one host site that mounts them)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.origins = OriginPolicy(ctx.settings.allowed_origins)
        self.hosts = HostPolicy(ctx.settings.allowed_hosts)
        self.sse_heartbeat = Heartbeat(ctx.clock, ctx.settings.sse.heartbeat)
        self.stream_heartbeat = Heartbeat(ctx.clock, ctx.settings.stream.heartbeat)
        self.ws_factory = ws.WsFactory(ctx, self.origins)
        self.extra_routes: dict[str, Any] = {}
        self.app = self._klein()
        self.router = Router(ROUTES)
        self.hot: dict[Route, Callable[..., Any]] = {
            route: getattr(self, route.handler) for route in ROUTES if route.hot
        }

    def _klein(self) -> Klein:
        """The Klein app of :data:`~pushd.web.routes.ROUTES`: Klein routes,
        the one renderer answers (see :class:`~pushd.web.render.Answer`)."""
        app = Klein()
        for route in ROUTES:
            handler = getattr(self, route.handler)

            def klein_route(
                request: Request, _handler: Callable[..., Any] = handler, **kwargs: str
            ) -> Answer:
                return Answer(_handler, kwargs)

            app.route(route.path, methods=list(route.methods), endpoint=route.endpoint)(
                klein_route
            )
        app.handle_errors(NotFound)(self.not_found)
        app.handle_errors(MethodNotAllowed)(self.not_allowed)
        app.handle_errors(HTTPException)(self.http_error)
        return app

    # -- operations ------------------------------------------------------
    def healthz(self, request: Request) -> bytes:
        return json_response(request, {"status": "ok"})

    def readyz(self, request: Request) -> bytes:
        """503 while starting, draining or without the broker's Redis, so a
        load balancer sends no one new."""
        status = self.ctx.registry.readiness
        return json_response(request, {"status": status}, 200 if status == "ready" else 503)

    def metrics(self, request: Request) -> Any:
        """Mounted by pushd.tap (``extra_routes["metrics"]``) unless it has its own listener."""
        if "metrics" not in self.extra_routes:
            raise PushdError(404, "not_found", "no such URL")
        self.ctx.authorize(request, "admin", "")
        return self.extra_routes["metrics"]

    # -- publishing ------------------------------------------------------
    def publish_batch(self, request: Request) -> Any:
        return publish.publish_batch(self.ctx, request)

    def publish_one(self, request: Request, channel: str) -> Any:
        return publish.publish_one(self.ctx, request, channel)

    def info(self, request: Request, channel: str) -> Any:
        return publish.info(self.ctx, request, channel)

    def delete(self, request: Request, channel: str) -> Any:
        return publish.delete(self.ctx, request, channel)

    # -- transports ------------------------------------------------------
    def poll(self, request: Request, channel: str) -> Any:
        return poll.poll(self.ctx, request, channel)

    def longpoll(self, request: Request, channel: str) -> Any:
        return longpoll.longpoll(self.ctx, request, channel)

    def stream(self, request: Request, channel: str) -> Any:
        return ndjson.stream(self.ctx, request, channel, self.stream_heartbeat)

    def events(self, request: Request, channel: str) -> Any:
        return sse.events(self.ctx, request, channel, self.sse_heartbeat)

    def websocket(self, request: Request) -> Any:
        return ws.resource(self.ws_factory)

    def channel_websocket(self, request: Request, channel: str) -> Any:
        return ws.resource(self.ws_factory, channel)

    # -- browser side: pushd.js, its types, demo and status pages ---------
    def demo_page(self, request: Request) -> bytes:
        return pages.page(self.ctx, request, "demo.html")

    def status_page(self, request: Request) -> bytes:
        self.ctx.authorize(request, "admin", "")
        return pages.page(self.ctx, request, "status.html")

    def page_asset(self, request: Request, name: str) -> bytes:
        return pages.static(self.ctx, request, name)

    def client(self, request: Request) -> bytes:
        return pages.serve(request, request.path.decode().lstrip("/"))

    # -- errors ----------------------------------------------------------
    def not_found(self, request: Request, failure: Failure) -> bytes:
        return error_response(request, PushdError(404, "not_found", "no such URL"))

    def not_allowed(self, request: Request, failure: Failure) -> bytes:
        valid = sorted(set(failure.value.valid_methods or ()) - {"HEAD"})
        request.setHeader(b"Allow", ", ".join(valid).encode())
        return error_response(
            request,
            PushdError(405, "method_not_allowed", f"use {' or '.join(valid)}"),
        )

    def http_error(self, request: Request, failure: Failure) -> bytes:
        e = failure.value
        error = PushdError(e.code or 400, "bad_request", e.description or "")
        return error_response(request, error)

    # -- assembly --------------------------------------------------------
    def resource(self) -> Resource:
        """Everything pushd serves, as one twisted.web resource."""
        return CorsResource(Dispatch(self, self.app.resource()), self.origins, self.hosts)

    def body_limit(self, method: bytes, path: bytes) -> int:
        """The largest request body read for a route: a batch, or one message."""
        limits = self.ctx.settings.limits
        if path == b"/publish" and method == b"POST":
            return limits.batch_size
        return limits.message_size

    def site(self) -> HttpServer:
        """The daemon's HTTP server: hot routes answered by :meth:`hook`, the
        rest through twisted.web and Klein (:class:`~pushd.server.WebBridge`)."""
        server = HttpServer(
            WebBridge(self.resource()), self.ctx.clock, self.ctx.settings.http, self.body_limit
        )
        server.hook = self.hook
        return server

    def hook(self, conn: HttpConnection, parsed: HttpRequest) -> bool | Exchange:
        """The table's hot routes, answered without building a twisted.web Request.

        The same match (:class:`~pushd.web.routes.Router`), the same checks
        (:func:`~pushd.web.origins.guard`), handler and renderer as through
        :class:`Dispatch`, over an :class:`~pushd.server.exchange.Exchange`:
        False leaves the request to twisted.web; True once it is answered (or
        its connection taken over); the exchange when it is answered later.
        """
        found = self.router.match(parsed.method, parsed.path)
        if found is None:
            return False
        route, kwargs = found
        request = Exchange(conn, parsed)
        try:
            body = guard(request, self.origins, self.hosts)
            if body is None:  # render.answer, inlined: this runs per request
                try:
                    result = self.hot[route](request, **kwargs)
                    body = result if type(result) is bytes else render(request, result)
                except PushdError as e:
                    body = error(request, e)
        except Exception:
            request.processingFailed(Failure())
            return True
        if body is NOT_DONE_YET:
            if request.finished or conn.wrappedProtocol is not None:
                return True
            return request
        request.respond(body)  # type: ignore[arg-type]
        return True

    def stop(self) -> None:
        self.sse_heartbeat.stop()
        self.stream_heartbeat.stop()


class Dispatch(Resource):
    """The hot routes straight from the table to the renderer; the rest to Klein.

    Through Klein each request binds a werkzeug URL map, matches it and runs
    through several Deferreds before reaching its handler: measured with
    ``python -m bench`` (2,000 channels, one subscriber each, publishing at
    full speed), about a third of a publish's CPU. The table's ``hot`` routes
    are matched here in a few lookups instead (:class:`~pushd.web.routes.Router`)
    and answered by the same handler and renderer Klein would reach.
    """

    isLeaf = True

    def __init__(self, app: PushdApp, inner: Resource) -> None:
        super().__init__()
        self.inner = inner
        self.router = app.router
        self.handlers = app.hot

    def render(self, request: Request) -> bytes | int:
        path = request.path
        if request.prepath:  # mounted under a prefix of a host site
            prefix = b"/" + b"/".join(request.prepath)
            path = path[len(prefix) :] if path.startswith(prefix) else b""
        found = self.router.match(request.method, path)
        if found is None:
            return self.inner.render(request)  # type: ignore[no-any-return]
        route, kwargs = found
        return answer(request, self.handlers[route], kwargs)
