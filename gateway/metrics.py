"""Prometheus metrics, one registry per app (so that several apps in one process, as in the
tests, do not collide). Under gunicorn each worker counts for itself; `/metrics` shows the
worker that answers (set up prometheus-client's multiprocess mode to aggregate)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "gateway_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gateway_request_seconds",
            "Time to the response headers, by route template",
            ["route"],
            registry=self.registry,
        )
        self.connector_errors = Counter(
            "gateway_connector_errors",
            "Connector failures seen by requests, by connector and HTTP status",
            ["connector", "status"],
            registry=self.registry,
        )

        self.cache = Counter(
            "gateway_cache_lookups",
            "Metadata cache lookups (searches and WADO-RS metadata), by connector and result",
            ["connector", "result"],
            registry=self.registry,
        )

    def cache_lookup(self, connector: str, result: str) -> None:
        self.cache.labels(connector, result).inc()

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def connector_failed(self, connector: str, status: int) -> None:
        self.connector_errors.labels(connector, str(status)).inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)
