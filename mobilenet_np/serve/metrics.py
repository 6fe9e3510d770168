"""Prometheus metrics (the official ``prometheus_client``), one registry per app, and the ASGI
middleware that counts every HTTP request by model, protocol and status code."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("mobilenet_np_requests", "HTTP requests answered, by model, protocol and status",
                                ["model", "protocol", "status"], registry=r)
        self.latency = Histogram("mobilenet_np_request_duration_seconds", "Time from request to response",
                                 ["model", "protocol"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("mobilenet_np_batch_size", "Images per batch run by the model", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("mobilenet_np_batch_duration_seconds", "Time to run one batch", ["model"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("mobilenet_np_queue_depth", "Images waiting in the model's queue", ["model"],
                                 registry=r)
        self.running = Gauge("mobilenet_np_images_running", "Images in the batch the model is running", ["model"],
                             registry=r)
        self.model_ready = Gauge("mobilenet_np_model_ready", "1 once the model is warmed up and serving", ["model"],
                                 registry=r)
        self.in_flight = Gauge("mobilenet_np_requests_in_flight", "HTTP requests being handled", registry=r)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _labels(path: str, known_models) -> tuple[str, str]:
    """(model, protocol) for a request path; unknown model names share one label value so a
    client cannot grow the label set."""
    parts = path.split("/")
    protocol = parts[1] if len(parts) > 1 and parts[1] in ("v1", "v2") else "other"
    model = ""
    if len(parts) > 3 and parts[2] == "models":
        name = parts[3].split(":", 1)[0]
        model = name if name in known_models else "<unknown>"
    return model, protocol


class MetricsMiddleware:
    """Pure ASGI middleware: status code and latency of every HTTP request."""

    def __init__(self, app, metrics: Metrics, known_models):
        self.app = app
        self.metrics = metrics
        self.known_models = known_models

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            model, protocol = _labels(scope.get("path", ""), self.known_models)
            self.metrics.requests.labels(model, protocol, str(status[0])).inc()
            self.metrics.latency.labels(model, protocol).observe(time.perf_counter() - started)
