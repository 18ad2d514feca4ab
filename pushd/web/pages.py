"""The browser side: ``pushd.js``, its types, the demo page and the status page.

Everything is read from ``pushd/static`` once and served from memory with an
``ETag`` (a hash of the bytes) and ``Cache-Control: no-cache``, so a browser
revalidates and gets ``304`` until the daemon is upgraded. The pages carry a
``Content-Security-Policy`` that allows only this origin: no CDN, no external
fonts, nothing inline.

``pushd.core.js`` is the client's one source. ``/pushd.js`` wraps it as a
classic script that sets ``window.pushd``; ``/pushd.mjs`` as an ES module
exporting ``subscribe``. Both wrappers leave the text unchanged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

from twisted.web.iweb import IRequest

from pushd.errors import PushdError
from pushd.web.context import Context
from pushd.web.request import header

JS = b"text/javascript; charset=utf-8"
TYPES = {
    "html": b"text/html; charset=utf-8",
    "js": JS,
    "mjs": JS,
    "css": b"text/css; charset=utf-8",
    "ts": b"application/typescript; charset=utf-8",
    "svg": b"image/svg+xml",
}
# Pages may load and connect to this origin only; the WebSocket is same-origin too.
PAGE_POLICY = (
    b"default-src 'self'; img-src 'self' data:; connect-src 'self'; "
    b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# Files a page loads by name from /static/<name>.
PAGE_ASSETS = ("demo.js", "status.js", "pages.css")

CLASSIC = '(function () {\n"use strict";\n%s\nglobalThis.pushd = pushd;\n})();\n'
MODULE = (
    "%s\nexport { subscribe };\n"
    "export const version = pushd.version, transports = pushd.transports;\n"
    "export default pushd;\n"
)


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: bytes
    etag: bytes
    page: bool = False


def _read(name: str) -> str:
    return (resources.files("pushd") / "static" / name).read_text("utf-8")


def _asset(body: str, kind: str, page: bool = False) -> Asset:
    data = body.encode("utf-8")
    tag = b'"' + hashlib.sha256(data).hexdigest()[:20].encode() + b'"'
    return Asset(data, TYPES[kind], tag, page)


@cache
def asset(name: str) -> Asset:
    """The served file called ``name`` (pushd.js, demo.html, ...)."""
    if name == "pushd.js":
        return _asset(CLASSIC % _read("pushd.core.js"), "js")
    if name == "pushd.mjs":
        return _asset(MODULE % _read("pushd.core.js"), "mjs")
    kind = name.rsplit(".", 1)[-1]
    return _asset(_read(name), kind, page=kind == "html")


def serve(request: IRequest, name: str) -> bytes:
    """Answer with the asset ``name``, or ``304`` when the client has it."""
    found = asset(name)
    request.setHeader(b"Content-Type", found.content_type)
    request.setHeader(b"Cache-Control", b"no-cache")
    request.setHeader(b"ETag", found.etag)
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    if found.page:
        request.setHeader(b"Content-Security-Policy", PAGE_POLICY)
        request.setHeader(b"Referrer-Policy", b"no-referrer")
    sent = header(request, "if-none-match") or ""
    if found.etag.decode() in [t.strip().removeprefix("W/") for t in sent.split(",")]:
        request.setResponseCode(304)
        return b""
    request.setHeader(b"Content-Length", b"%d" % len(found.body))
    return found.body if request.method != b"HEAD" else b""


def page(ctx: Context, request: IRequest, name: str) -> bytes:
    """The demo or status page, unless ``[web] demo = false``."""
    if not ctx.settings.web.demo:
        raise PushdError(404, "not_found", "the demo pages are off ([web] demo = false)")
    return serve(request, name)


def static(ctx: Context, request: IRequest, name: str) -> bytes:
    """A file the pages load (``/static/demo.js``...)."""
    if name not in PAGE_ASSETS:
        raise PushdError(404, "not_found", "no such file")
    return page(ctx, request, name)
