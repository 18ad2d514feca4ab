"""``/metrics``: Prometheus text read from the daemon's own counters.

Nothing here runs per message. The transports, broker, sources and site
already keep plain integers (:class:`pushd.registry.Registry`,
``broker.stats``, each source's ``published``/``errors``/``restarts``, the
site's status counts); :class:`PushdCollector` turns them into metric
families only when Prometheus scrapes. The registry is the daemon's own
``CollectorRegistry()``, never the global one, so two daemons (or tests) in
one process never share numbers. Rendering is a plain resource on the
reactor thread: ``generate_latest`` over a few dozen numbers is cheaper than
handing it to a thread pool, and it reads the counters without any lock.

Imported by :mod:`pushd.tap` only.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from pushd.errors import PushdError
from pushd.registry import TRANSPORTS
from pushd.web.render import error

if TYPE_CHECKING:
    from pushd.tap import Daemon
    from pushd.workers import HostMetrics

log = Logger()


class PushdCollector(Collector):
    """Reads one daemon's counters at scrape time. Names are fixed by DESIGN.md."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        daemon = self.daemon
        reg = daemon.registry
        yield self._by_transport(
            GaugeMetricFamily,
            "pushd_connections",
            "Open subscriptions (held long-polls, streams, SSE, WebSockets) by transport.",
            {t: reg.count(t) for t in TRANSPORTS},
        )
        yield self._by_transport(
            CounterMetricFamily,
            "pushd_deliveries",
            "Messages written to one client (replays included; notices and heartbeats not).",
            reg.deliveries,
        )
        yield self._by_transport(
            CounterMetricFamily,
            "pushd_slow_clients_dropped",
            "Connections closed because their queue passed [limits] queue.",
            reg.dropped,
        )
        yield self._by_transport(
            CounterMetricFamily,
            "pushd_resets",
            "Reset notices sent because a cursor could not be honoured.",
            reg.resets,
        )
        yield self._by_transport(
            CounterMetricFamily,
            "pushd_bytes_sent",
            "Bytes written to streaming connections (SSE, stream, WebSocket), open ones included.",
            reg.bytes_sent_now(),
        )
        broker = daemon.broker
        yield CounterMetricFamily(
            "pushd_messages_published",
            "Messages stored by the broker.",
            value=broker.stats.published,
        )
        yield GaugeMetricFamily(
            "pushd_history_messages",
            "Messages kept in history, all channels.",
            value=broker.history_size(),
        )
        yield GaugeMetricFamily(
            "pushd_channels",
            "Channels with history or subscribers.",
            value=broker.channel_count(),
        )
        yield GaugeMetricFamily(
            "pushd_subscribers",
            "Broker subscriptions on this process.",
            value=broker.subscriber_count(),
        )
        published = CounterMetricFamily(
            "pushd_source_published", "Messages published by a source.", labels=["source"]
        )
        errors = CounterMetricFamily(
            "pushd_source_errors", "Failures and skipped input of a source.", labels=["source"]
        )
        restarts = CounterMetricFamily(
            "pushd_source_restarts",
            "Times a source was restarted after backoff.",
            labels=["source"],
        )
        for source in daemon.sources:
            name = str(source.name)
            published.add_metric([name], getattr(source, "published", 0))
            errors.add_metric([name], getattr(source, "errors", 0))
            restarts.add_metric([name], getattr(source, "restarts", 0))
        yield published
        yield errors
        yield restarts
        requests = CounterMetricFamily(
            "pushd_http_responses",
            "HTTP responses by status code (counted when headers go out).",
            labels=["code"],
        )
        for code, n in sorted(daemon.site.responses.items()):
            requests.add_metric([str(code)], n)
        yield requests
        conns = daemon.site.connections
        yield GaugeMetricFamily(
            "pushd_http_connections",
            "Open TCP connections to the site (any state).",
            value=conns.total,
        )
        yield CounterMetricFamily(
            "pushd_http_connections_refused",
            "Requests answered 503 at a connection limit, or 429 over [limits] connect_rate.",
            value=conns.refused,
        )
        yield GaugeMetricFamily(
            "pushd_ready", "1 while /readyz answers 200.", value=1 if reg.ready else 0
        )
        worker = GaugeMetricFamily(
            "pushd_worker",
            "The process that answered (workers = N): its index, 0 being the parent that "
            "binds the listeners, and its pid.",
            labels=["worker", "pid"],
        )
        worker.add_metric([str(daemon.worker), str(os.getpid())], 1)
        yield worker
        if daemon.workers is not None:
            yield CounterMetricFamily(
                "pushd_worker_restarts",
                "Workers the parent started again after they died.",
                value=daemon.workers.restarts,
            )

    @staticmethod
    def _by_transport(kind: Any, name: str, doc: str, values: dict[str, int]) -> Metric:
        family = kind(name, doc, labels=["transport"])
        for transport in TRANSPORTS:
            family.add_metric([transport], values.get(transport, 0))
        return family  # type: ignore[no-any-return]


class MetricsResource(Resource):
    """``GET /metrics``: the exposition of one registry, on the reactor thread.

    With ``workers = N`` (``host`` set), every worker's, labelled by worker:
    see :class:`pushd.workers.HostMetrics`.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry
        self.host: HostMetrics | None = None

    def own(self) -> bytes:
        """This process's exposition alone."""
        return generate_latest(self.registry)

    def render_GET(self, request: Request) -> bytes | int:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"Cache-Control", b"no-store")
        if self.host is None:
            return self.own()
        # which process answered (the body covers them all); not on any other route
        request.setHeader(b"Pushd-Worker", str(self.host.index).encode())
        gone: list[object] = []
        request.notifyFinish().addBoth(gone.append)

        def answer(body: bytes) -> None:
            if not gone:
                request.setHeader(b"Content-Length", str(len(body)).encode())
                request.write(body)
                request.finish()

        def failed(failure: Failure) -> None:
            log.failure("/metrics: gathering the workers' metrics", failure)
            if not gone:
                request.setResponseCode(500)
                request.finish()

        Deferred.fromCoroutine(self.host.gather()).addCallbacks(answer, failed)
        return NOT_DONE_YET


class _Status(Resource):
    """``/healthz`` or ``/readyz`` on the ops listener, like the main site's routes."""

    isLeaf = True

    def __init__(self, daemon: Daemon, readiness: bool) -> None:
        super().__init__()
        self.daemon = daemon
        self.readiness = readiness

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        if not self.readiness:
            return b'{"status":"ok"}'
        status = self.daemon.registry.readiness
        if status != "ready":
            request.setResponseCode(503)
        return b'{"status":"%s"}' % status.encode()


class _Admin(Resource):
    """``/metrics`` on the ops listener, judged as on the main one (a loopback
    client without a token, or a token granting ``admin``): a listener of its
    own moves the route, it does not open it to whoever reaches that port."""

    isLeaf = True

    def __init__(self, daemon: Daemon, inner: Resource) -> None:
        super().__init__()
        self.daemon = daemon
        self.inner = inner

    def render(self, request: Request) -> Any:
        try:
            self.daemon.context.authorize(request, "admin", "")
        except PushdError as e:
            return error(request, e)
        return self.inner.render(request)


def ops_root(daemon: Daemon, metrics: MetricsResource) -> Resource:
    """The root of the ``[metrics] listen`` site: /metrics, /healthz, /readyz.

    This listener stays open through a drain (the public ones close first),
    so a probe on it sees ``/readyz`` turn 503 and Prometheus can watch the
    connections fall.
    """
    root = Resource()
    root.putChild(b"metrics", _Admin(daemon, metrics))
    root.putChild(b"healthz", _Status(daemon, readiness=False))
    root.putChild(b"readyz", _Status(daemon, readiness=True))
    return root


def metrics_resource(daemon: Daemon) -> MetricsResource:
    """A resource serving this daemon's metrics from a registry of its own."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PushdCollector(daemon))
    return MetricsResource(registry)
