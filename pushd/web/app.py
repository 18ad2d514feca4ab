"""The one URL table. Each route parses, calls one module, and returns.

Klein's ``app`` is a class attribute so every :class:`PushdApp` carries its
own broker and settings (no globals); transports live in their own modules
and never import each other.
"""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from pushd.errors import PushdError
from pushd.outlet import Heartbeat
from pushd.server import HttpServer, WebBridge
from pushd.web import longpoll, pages, poll, publish, sse, stream, ws
from pushd.web.common import Context, error_response, json_response
from pushd.web.fastlane import FastLane
from pushd.web.origins import CorsResource, OriginPolicy


class PushdApp:
    app = Klein()

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.origins = OriginPolicy(ctx.settings.allowed_origins)
        self.sse_heartbeat = Heartbeat(ctx.clock, ctx.settings.sse.heartbeat)
        self.stream_heartbeat = Heartbeat(ctx.clock, ctx.settings.stream.heartbeat)
        self.ws_factory = ws.WsFactory(ctx, self.origins)
        self.extra_routes: dict[str, Any] = {}

    # -- operations ------------------------------------------------------
    @app.route("/healthz", methods=["GET"])
    def healthz(self, request: Request) -> bytes:
        return json_response(request, {"status": "ok"})

    @app.route("/readyz", methods=["GET"])
    def readyz(self, request: Request) -> bytes:
        """503 while starting or draining, so a load balancer sends no one new."""
        if self.ctx.registry.ready:
            return json_response(request, {"status": "ready"})
        status = "draining" if self.ctx.registry.draining else "starting"
        return json_response(request, {"status": status}, 503)

    @app.route("/metrics", methods=["GET"])
    def metrics(self, request: Request) -> Any:
        """Mounted by pushd.tap (``extra_routes["metrics"]``) unless it has its own listener."""
        if "metrics" not in self.extra_routes:
            raise NotFound()
        return self.extra_routes["metrics"]

    # -- publishing ------------------------------------------------------
    @app.route("/publish", methods=["POST"])
    def publish_batch(self, request: Request) -> Any:
        return publish.publish_batch(self.ctx, request)

    @app.route("/channels/<channel>", methods=["POST"])
    def publish_one(self, request: Request, channel: str) -> Any:
        return publish.publish_one(self.ctx, request, channel)

    @app.route("/channels/<channel>", methods=["GET"])
    def info(self, request: Request, channel: str) -> Any:
        return publish.info(self.ctx, request, channel)

    @app.route("/channels/<channel>", methods=["DELETE"])
    def delete(self, request: Request, channel: str) -> Any:
        return publish.delete(self.ctx, request, channel)

    # -- transports ------------------------------------------------------
    @app.route("/channels/<channel>/poll", methods=["GET"])
    def poll(self, request: Request, channel: str) -> Any:
        return poll.poll(self.ctx, request, channel)

    @app.route("/channels/<channel>/longpoll", methods=["GET"])
    def longpoll(self, request: Request, channel: str) -> Any:
        return longpoll.longpoll(self.ctx, request, channel)

    @app.route("/channels/<channel>/stream", methods=["GET", "POST"])
    def stream(self, request: Request, channel: str) -> Any:
        return stream.stream(self.ctx, request, channel, self.stream_heartbeat)

    @app.route("/channels/<channel>/events", methods=["GET"])
    def events(self, request: Request, channel: str) -> Any:
        return sse.events(self.ctx, request, channel, self.sse_heartbeat)

    @app.route("/ws", methods=["GET"])
    def websocket(self, request: Request) -> Any:
        return ws.resource(self.ws_factory)

    @app.route("/channels/<channel>/ws", methods=["GET"])
    def channel_websocket(self, request: Request, channel: str) -> Any:
        return ws.resource(self.ws_factory, channel)

    # -- browser side: pushd.js, its types, demo and status pages ---------
    @app.route("/", methods=["GET"])
    def demo_page(self, request: Request) -> bytes:
        return pages.page(self.ctx, request, "demo.html")

    @app.route("/status", methods=["GET"])
    def status_page(self, request: Request) -> bytes:
        return pages.page(self.ctx, request, "status.html")

    @app.route("/static/<name>", methods=["GET"])
    def page_asset(self, request: Request, name: str) -> bytes:
        return pages.static(self.ctx, request, name)

    @app.route("/pushd.js", methods=["GET"])
    @app.route("/pushd.mjs", methods=["GET"])
    @app.route("/pushd.d.ts", methods=["GET"])
    def client(self, request: Request) -> bytes:
        return pages.serve(request, request.path.decode().lstrip("/"))

    # -- errors ----------------------------------------------------------
    @app.handle_errors(PushdError)
    def pushd_error(self, request: Request, failure: Failure) -> bytes:
        if getattr(failure.value, "retry_after", None) is not None:  # a limit: 503
            request.setHeader(b"Retry-After", str(failure.value.retry_after).encode())
        return error_response(request, failure.value)

    @app.handle_errors(NotFound)
    def not_found(self, request: Request, failure: Failure) -> bytes:
        return error_response(request, PushdError(404, "not_found", "no such URL"))

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(self, request: Request, failure: Failure) -> bytes:
        valid = sorted(set(failure.value.valid_methods or ()) - {"HEAD"})
        request.setHeader(b"Allow", ", ".join(valid).encode())
        return error_response(
            request,
            PushdError(405, "method_not_allowed", f"use {' or '.join(valid)}"),
        )

    @app.handle_errors(HTTPException)
    def http_error(self, request: Request, failure: Failure) -> bytes:
        e = failure.value
        error = PushdError(e.code or 400, "bad_request", e.description or "")
        return error_response(request, error)

    # -- assembly --------------------------------------------------------
    def resource(self) -> Resource:
        # the hottest URLs skip Klein's router (see pushd.web.fastlane)
        return CorsResource(FastLane(self, self.app.resource()), self.origins)

    def body_limit(self, method: bytes, path: bytes) -> int:
        """The largest request body read for a route: a batch, or one message."""
        limits = self.ctx.settings.limits
        if path == b"/publish" and method == b"POST":
            return limits.batch_size
        return limits.message_size

    def site(self) -> HttpServer:
        """The daemon's HTTP server over this app's resources."""
        return HttpServer(
            WebBridge(self.resource()), self.ctx.clock, self.ctx.settings.http, self.body_limit
        )

    def stop(self) -> None:
        self.sse_heartbeat.stop()
        self.stream_heartbeat.stop()
