"""pushd's HTTP/1.1 server: httptools parsing, bounds and deadlines, and a
bridge to the twisted.web resource tree (see :mod:`pushd.server.protocol`)."""

from pushd.server.bridge import WebBridge
from pushd.server.protocol import (
    ALWAYS_SERVED,
    Connections,
    HttpConnection,
    HttpError,
    HttpRequest,
    HttpServer,
)

__all__ = [
    "ALWAYS_SERVED",
    "Connections",
    "HttpConnection",
    "HttpError",
    "HttpRequest",
    "HttpServer",
    "WebBridge",
]
