"""`GET /metrics` of `derm serve`: Prometheus text format, from the official `prometheus_client`.

    derm_serve_requests_total{endpoint, method, status}   requests answered
    derm_serve_request_seconds{endpoint}                  latency histogram, seconds
    derm_serve_redis_errors_total{endpoint}               requests that could not reach Redis

`endpoint` is one of the service's routes or "other" (an unknown path is not a label
value of its own, so a scanner cannot grow the series without bound). A request is
counted before the last byte of its answer is sent, so a client that has read an answer
sees it counted in the next scrape.

Values live in files under ``PROMETHEUS_MULTIPROC_DIR`` and a scrape sums them over
processes (prometheus_client's multi-process mode, which that variable switches on when
the library is imported). Several workers (`derm serve --workers N`, gunicorn forks) need
it; importing Feast switches it on anyway (feast.metrics sets the variable to a temporary
directory of its own), so `derm serve` starts with a fresh directory of the service's
own (derm_features.commands.serving).
"""

from __future__ import annotations

import functools
import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ROUTES = ("/embeddings", "/retrieve", "/health", "/metrics")
# Seconds; a read of 100 ids takes ~ms, a cold retrieval or a Redis timeout up to seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def multiprocess() -> bool:
    """True when prometheus_client keeps its values in shared files (several workers): the
    mode it chose at import, whatever the environment says now."""
    from prometheus_client import values

    return values.ValueClass is not values.MutexValue


@functools.cache
def serve_metrics() -> ServeMetrics:
    """The process's metrics, shared by every app it serves (tests run several): in
    multi-process mode two metric objects of one name would overwrite each other's value
    in the process's file, each writing its own running count."""
    return ServeMetrics()


class ServeMetrics:
    """The service's counters and histogram; one per process (`serve_metrics`)."""

    def __init__(self) -> None:
        # In multi-process mode the values live in files and a scrape reads them all,
        # so the metrics are registered nowhere.
        self.registry = None if multiprocess() else CollectorRegistry()
        self.requests = Counter(
            "derm_serve_requests",
            "HTTP requests answered, by route, method and status code.",
            ("endpoint", "method", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "derm_serve_request_seconds",
            "Seconds from a request's arrival to the last byte of its answer, by route.",
            ("endpoint",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.redis_errors = Counter(
            "derm_serve_redis_errors",
            "Requests that failed because Redis was unreachable (answered 503), by route.",
            ("endpoint",),
            registry=self.registry,
        )

    def redis_error(self, path: str) -> None:
        self.redis_errors.labels(endpoint_of(path)).inc()

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """(body, content type) of one scrape, in the format the scraper's Accept header asks
        for (Prometheus text 0.0.4 by default, OpenMetrics on request); every worker's
        values when there are several."""
        encoder, content_type = choose_encoder(accept or "")
        registry = self.registry
        if registry is None:
            registry = CollectorRegistry()
            registry.register(OwnMetrics(MultiProcessCollector(None)))
        return encoder(registry), content_type


class OwnMetrics:
    """A collector of the `derm_serve_*` families only: importing Feast defines its feature
    server's metrics in the same shared files, and they never move in `derm serve`."""

    def __init__(self, collector):
        self.collector = collector

    def collect(self):
        return (f for f in self.collector.collect() if f.name.startswith("derm_serve_"))


def endpoint_of(path: str) -> str:
    """The route label of a request path: one of `ROUTES`, else "other"."""
    return path if path in ROUTES else "other"


class RequestMetrics:
    """ASGI middleware: counts every HTTP answer and observes its latency, including the
    413s of the body-size limit (add it last, so it is the outermost user middleware) and
    the 500s that Starlette's outermost error middleware writes after an exception. A
    client that leaves before its answer is complete is not counted."""

    def __init__(self, app, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        endpoint, status, recorded = endpoint_of(scope["path"]), 0, False

        def record() -> None:
            nonlocal recorded
            if not recorded:
                recorded = True
                self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
                self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

        async def counting_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                record()  # before the last byte leaves: a client that read it sees it counted
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            status = 500  # Starlette's outermost middleware answers it with a 500
            record()
            raise
