"""The gateway's own HTTP metrics (Prometheus), served at ``GET /metrics``
(:mod:`gateway.routes.metrics`).

Requests are labelled by route template (``/workflows/{workflow_id}``), never by raw
path, so ids do not explode the label space. One registry per app: several apps in one
process (tests) keep apart.
"""

from __future__ import annotations

import time
from typing import Final

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["UNMATCHED_ROUTE", "GatewayMetrics", "install_metrics"]

#: The route label of requests no route matched (404s of unknown paths).
UNMATCHED_ROUTE: Final = "unmatched"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    float("inf"))


class GatewayMetrics:
    """The metric objects of one gateway app, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "natsflow_gateway_requests", "HTTP requests answered, by route template and status.",
            ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "natsflow_gateway_request_duration_seconds",
            "Seconds from a request's arrival to the end of its answer, by route template.",
            ["method", "route"], buckets=_LATENCY_BUCKETS, registry=self.registry)

    def names(self) -> list[str]:
        """Every metric's exposed name (``_total`` on counters; a histogram's base name)."""
        return sorted(m.name + ("_total" if m.type == "counter" else "")
                      for m in self.registry.collect())


class _MetricsMiddleware:
    """Pure ASGI middleware: counts and times each HTTP request."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500  # if the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # The router leaves the matched route in the (shared) scope.
            route = getattr(scope.get("route"), "path", UNMATCHED_ROUTE)
            method = scope["method"]
            self.metrics.requests.labels(method=method, route=route, status=str(status)).inc()
            self.metrics.latency.labels(method=method, route=route).observe(
                time.perf_counter() - began)


def install_metrics(app: FastAPI) -> GatewayMetrics:
    """Count the app's requests (``gateway.routes.metrics`` serves them)."""
    metrics = GatewayMetrics()
    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    return metrics
