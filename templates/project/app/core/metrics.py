"""Prometheus metrics, one registry per app instance (several apps can share a process in tests).

The names are documented in the README ("Metrics"); tools read them (``taskscale drill``).
Counts that change on the request path are plain integers on the objects that own them (the
cache, the database nodes) and are read at scrape time by ``Snapshot``: a Prometheus counter's
lock per increment is not free on a hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class CacheCounters:
    """One resource's cache lookups, by result."""

    hit_local: Any
    hit_redis: Any
    miss: Any


def new_registry() -> CollectorRegistry:
    # Collectors without names (``Snapshot``: its series are known only at scrape time) take
    # part in a ``name[]`` scrape too.
    return CollectorRegistry(auto_describe=True, support_collectors_without_names=True)


def exposition(registry: CollectorRegistry, names: list[str]) -> bytes:
    """Prometheus text of ``registry``; with ``names`` (``/metrics?name[]=http_requests_total``,
    repeatable: the parameter prometheus_client's own exporters take) only those samples, and
    the collectors that cannot have one of them (the latency histograms) are not even asked."""
    return generate_latest(registry.restricted_registry(names) if names else registry)


class Metrics:
    def __init__(self) -> None:
        self.registry = new_registry()
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
        self.outbox_oldest_age = Gauge(
            "outbox_oldest_unpublished_age_seconds",
            "Age of the oldest outbox event not yet published (0 when none).",
            registry=self.registry,
        )
        self.rate_limited = Counter("rate_limited_requests_total", "Requests refused with 429.", registry=self.registry)
        self.dependency_up = Gauge(
            "dependency_up",
            "1 when the dependency answers (database: the primary; cache: Redis, trusted; broker).",
            ("dependency",),
            registry=self.registry,
        )
        self.degraded = Gauge(
            "app_degraded", "1 while ready but degraded (cache, broker or a standby missing).", registry=self.registry
        )
        self.snapshot = Snapshot()
        self.registry.register(self.snapshot)
        # (method, route, status) -> (counter child, histogram child): labels() is not free.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_pools(self, db: Any) -> None:
        """Pool gauges of ``db`` (an app.core.db.Database), set at scrape time."""
        for pool in db.pools:
            stats = pool.get_stats()
            size = stats.get("pool_size", 0)
            self.pool_size.labels(pool.name).set(size)
            self.pool_in_use.labels(pool.name).set(size - stats.get("pool_available", 0))
            self.pool_max.labels(pool.name).set(pool.max_size)
            self.pool_waiting.labels(pool.name).set(stats.get("requests_waiting", 0))

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


class Snapshot(Collector):
    """Metrics read at scrape time from the objects that keep them (see the module docstring).
    ``sources`` is filled by the app: name -> a function returning the metric families."""

    def __init__(self) -> None:
        self.sources: dict[str, Callable[[], Iterator[Metric]]] = {}

    def collect(self) -> Iterator[Metric]:
        for source in list(self.sources.values()):
            yield from source()

    def describe(self) -> list[Metric]:
        return []


Samples = list[tuple[dict[str, str], float]]


def counter_family(name: str, documentation: str, samples: Samples) -> Metric:
    """A counter read at scrape time (``name`` without ``_total``: the client adds it)."""
    family = CounterMetricFamily(name, documentation, labels=list(samples[0][0]) if samples else [])
    for labels, value in samples:
        family.add_metric(list(labels.values()), value)
    return family


def gauge_family(name: str, documentation: str, samples: Samples) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=list(samples[0][0]) if samples else [])
    for labels, value in samples:
        family.add_metric(list(labels.values()), value)
    return family
