"""The server's Prometheus metrics (`GET /metrics`, the text format of the standard
`prometheus_client` library), in a registry of the app's own, so two apps in one process
never share counts: requests by route, method and status; their latencies; the requests in
progress (the queue --max-queue bounds); the pixels and body bytes in flight beside their
budgets; open connections; and the size of every batch the model ran."""

from __future__ import annotations

from collections.abc import Callable

from hin.errors import MissingExtraError, pip_install
from hin.serve.admission import Admission

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
except ImportError as missing:
    raise MissingExtraError(f"`hin serve` needs prometheus_client: {pip_install('serve')}"
                            ) from missing

CONTENT_TYPE = CONTENT_TYPE_LATEST
ROUTES = ("/", "/healthz", "/readyz", "/metrics", "/v1/info", "/v1/captions", "/docs",
          "/openapi.json", "/favicon.ico")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def route_of(path: str) -> str:
    """A request's path -> a route name with few values (never the path as sent)."""
    if path in ROUTES:
        return path
    if path.startswith("/v1/demo/"):
        return "/v1/demo/{index}"
    if path.startswith("/static/"):
        return "/static"
    return "other"


class ServerMetrics:
    def __init__(self, admission: Admission) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter("hin_http_requests", "HTTP requests answered",
                                ["route", "method", "status"], registry=registry)
        self.latency = Histogram("hin_http_request_duration_seconds",
                                 "time from a request's head to the end of its answer",
                                 ["route"], registry=registry)
        self.batch_sizes = Histogram("hin_batch_size", "pictures captioned per model call",
                                     buckets=BATCH_BUCKETS, registry=registry)
        self.connections = Gauge("hin_open_connections", "HTTP connections open", registry=registry)
        gauges: dict[str, tuple[str, Callable[[], float]]] = {
            "hin_requests_in_progress": ("requests in the server (queue depth; --max-queue "
                                         "bounds it)", lambda: admission.requests),
            "hin_pixels_in_flight": ("pixels of pictures being decoded",
                                     lambda: admission.pixels),
            "hin_pixels_budget": ("--max-pixels-in-flight", lambda: admission.max_pixels),
            "hin_body_bytes_in_flight": ("bytes of request bodies held", lambda: admission.body),
            "hin_body_bytes_budget": ("--max-body-mb-in-flight in bytes",
                                      lambda: admission.max_body)}
        for name, (meaning, read) in gauges.items():
            Gauge(name, meaning, registry=registry).set_function(read)

    def observe(self, path: str, method: str, status: int, seconds: float) -> None:
        route = route_of(path)
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)
