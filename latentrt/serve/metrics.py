"""The server's Prometheus metrics (GET /metrics), in a registry of its own so that apps in one process do not mix."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST  # noqa: F401  (re-exported for the route)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self, queue_depth=lambda: 0):
        self.registry = CollectorRegistry()
        self.requests = Counter("latentrt_requests", "HTTP requests answered, by route and status code",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("latentrt_request_latency_seconds", "Time from a generation request's arrival to "
                                 "its answer", ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.images = Counter("latentrt_images", "Images generated", registry=self.registry)
        self.errors = Counter("latentrt_errors", "Requests that failed, by kind (validation, queue_full, too_large, "
                              "unauthorized, cancelled, generation, internal, overloaded, header_timeout, ...)", ["kind"],
                              registry=self.registry)
        self.batch_images = Histogram("latentrt_batch_images", "Images per pipeline call (batched requests)",
                                      buckets=(1, 2, 4, 8, 16, 32), registry=self.registry)
        self.queue_depth = Gauge("latentrt_queue_depth", "Requests waiting for the worker",
                                 registry=self.registry)
        self.queue_depth.set_function(queue_depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)
