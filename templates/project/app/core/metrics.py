"""Prometheus metrics, one registry per app instance (several apps can share a process in tests)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class CacheCounters:
    """One resource's cache lookups, by result."""

    hit_local: Any
    hit_redis: Any
    miss: Any


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "http_requests_total",
            "HTTP requests by method, route template and status code.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency by method, route template and status code.",
            ("method", "route", "status"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cache_requests = Counter(
            "cache_requests_total",
            "Cache lookups by resource and result (hit_local, hit_redis, miss).",
            ("resource", "result"),
            registry=self.registry,
        )
        self.pool_size = Gauge(
            "db_pool_connections", "Open connections in the database pool.", ("pool",), registry=self.registry
        )
        self.pool_in_use = Gauge(
            "db_pool_connections_in_use", "Connections checked out of the pool.", ("pool",), registry=self.registry
        )
        self.pool_max = Gauge(
            "db_pool_connections_max", "Maximum size of the database pool.", ("pool",), registry=self.registry
        )
        self.pool_waiting = Gauge(
            "db_pool_requests_waiting", "Requests waiting for a connection.", ("pool",), registry=self.registry
        )
        self.outbox_backlog = Gauge(
            "outbox_backlog", "Outbox events not yet published to the broker.", registry=self.registry
        )
        self.rate_limited = Counter("rate_limited_requests_total", "Requests refused with 429.", registry=self.registry)
        # (method, route, status) -> (counter child, histogram child): labels() is not free.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def cache_counters(self, resource: str) -> CacheCounters:
        labels = self.cache_requests.labels
        return CacheCounters(labels(resource, "hit_local"), labels(resource, "hit_redis"), labels(resource, "miss"))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            status_label = str(status)
            children = (
                self.requests.labels(method, route, status_label),
                self.latency.labels(method, route, status_label),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
