# No __init__.py beside this file, nor in twisted/: Twisted finds plugins
# by scanning every twisted/plugins directory on sys.path, and an
# __init__.py would shadow the real twisted package.
from twisted.application.service import ServiceMaker

pushd = ServiceMaker(
    "pushd",
    "pushd.tap",
    "Push channels to clients: poll, long-poll, HTTP stream, SSE and WebSocket.",
    "pushd",
)
