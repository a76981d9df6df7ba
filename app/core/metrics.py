"""Prometheus metrics: request counts and latencies by route, and the gallery size."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("http_requests_total", "HTTP requests",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "http_request_duration_seconds", "HTTP request latency", ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.gallery_items = Gauge("gallery_items", "items in the search index",
                                   registry=self.registry)
        self.gallery_labels = Gauge("gallery_labels", "labels in the gallery",
                                    registry=self.registry)
        self.in_flight = 0  # HTTP requests being answered (kept by MetricsMiddleware)
        Gauge("http_requests_in_flight", "HTTP requests being answered",
              registry=self.registry).set_function(self.requests_in_flight)

    def requests_in_flight(self) -> int:
        return self.in_flight


class MetricsMiddleware:
    """Times every HTTP request under its route template (not the raw path, whose ids
    would make one series per item), and counts those in flight."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight += 1
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight -= 1
            route = scope.get("route")
            name = getattr(route, "path", "unmatched")
            method = scope["method"]
            self.metrics.requests.labels(method, name, str(status)).inc()
            self.metrics.latency.labels(method, name).observe(time.perf_counter() - started)
