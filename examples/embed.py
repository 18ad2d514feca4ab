"""A Klein site of your own with pushd's routes mounted under /push/.

One process, one reactor, one broker: the host app serves its own pages,
publishes from its own code, and browsers subscribe under /push/:

    python examples/embed.py          # then, in another shell:
    curl -N http://127.0.0.1:8081/push/channels/orders/events
    curl -X POST http://127.0.0.1:8081/orders -d 'one pizza'
    curl -X POST http://127.0.0.1:8081/push/channels/orders -d 'from pushd itself'
"""

from __future__ import annotations

import sys
from typing import Any

from klein import Klein
from twisted.web.server import Request

from pushd.config import Settings
from pushd.tap import Daemon, embed


class Shop:
    """The host application: its own routes, and pushd under /push/."""

    app = Klein()

    def __init__(self, pushd: Daemon) -> None:
        self.pushd = pushd

    @app.route("/hello")
    def hello(self, request: Request) -> bytes:
        return b"hello from the host app\n"

    @app.route("/orders", methods=["POST"])
    async def order(self, request: Request) -> bytes:
        """The host's own code publishes through the same broker."""
        text = request.content.read().decode("utf-8", "replace")
        message = await self.pushd.broker.publish("orders", {"order": text})
        request.setResponseCode(201)
        return message.id.encode() + b"\n"

    @app.route("/push/", branch=True)
    def push(self, request: Request) -> Any:
        return self.pushd.resource()


def main(port: int = 8081) -> None:
    from twisted.internet import endpoints, reactor
    from twisted.python import log
    from twisted.web.server import Site

    log.startLogging(sys.stdout)
    settings = Settings()
    settings.sources = []  # no demo ticker
    pushd = embed(settings, reactor)
    pushd.startService()
    shop = Shop(pushd)
    endpoint = endpoints.TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")
    endpoint.listen(Site(shop.app.resource()))
    reactor.addSystemEventTrigger("before", "shutdown", pushd.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
