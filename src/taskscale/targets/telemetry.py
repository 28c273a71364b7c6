"""What a target's telemetry reads, once per sample: the typed reading and how it is read.

A ``TelemetrySample`` holds raw values as the servers report them: cumulative counters (requests
served, cache lookups) and gauges (pool in use, backlog, replication lag, CPU). Turning counters
into rates is the sampler's job (``loadtest.telemetry``), so a target only reads.

The app's and the worker's ``/metrics`` are Prometheus text; ``parse_prometheus`` reads the
samples (name, labels, value) without the ``prometheus_client`` package (an app extra, not a
taskscale dependency), and ``replica_reading`` / ``worker_reading`` pick the series the
generated app exports (``templates/project/app/core/metrics.py``; docs/loadtest.md lists them).
"""

from __future__ import annotations

import contextlib
import http.client
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from taskscale.replication import sql
from taskscale.replication.sql import WalSender

# Requests to these routes are the probes' and the scrapers' own, not load.
NOT_LOAD_ROUTES = frozenset({"/metrics", "/healthz", "/readyz"})

# The app's series (generated app/core/metrics.py).
HTTP_REQUESTS = "http_requests_total"
CACHE_REQUESTS = "cache_requests_total"
CACHE_HITS = frozenset({"hit_local", "hit_redis"})
POOL_IN_USE = "db_pool_connections_in_use"
OUTBOX_BACKLOG = "outbox_backlog"
APP_SERIES = (HTTP_REQUESTS + "{", CACHE_REQUESTS + "{", POOL_IN_USE + "{", OUTBOX_BACKLOG + " ")
# A replica is asked for these by name: the generated /metrics answers ``?name[]=`` with only
# them and skips the work of the rest (its dependency pings, the latency histograms); a project
# generated before that ignores the parameter and sends everything, which reads the same. The
# outbox backlog is one table for every replica and the worker, so one replica is asked for it
# only while the worker does not report it (``replica_backlog_wanted``).
APP_READ = (HTTP_REQUESTS, CACHE_REQUESTS, POOL_IN_USE)
# The worker's series (the generated app/worker.py, WorkerState.families), by WorkerReading field.
WORKER_SERIES: dict[str, str] = {
    "processed_total": "events_processed_total",
    "failed_total": "events_failed_total",
    "dead_lettered_total": "events_dead_lettered_total",
    "outbox_backlog": "outbox_backlog",
    "oldest_unpublished_s": "outbox_oldest_unpublished_age_seconds",
    "consumer_lag": "events_consumer_lag",
}


@dataclass(frozen=True)
class ReplicaReading:
    """One app replica's /metrics: cumulative counters and gauges (None: not exported)."""

    name: str  # the replica's instance id (INSTANCE_ID) or, failing that, its service name
    requests_total: float | None = None
    cache_hits_total: float | None = None
    cache_lookups_total: float | None = None
    pool_in_use: float | None = None
    outbox_backlog: float | None = None


@dataclass(frozen=True)
class WorkerReading:
    processed_total: float | None = None
    failed_total: float | None = None
    dead_lettered_total: float | None = None
    outbox_backlog: float | None = None
    oldest_unpublished_s: float | None = None
    consumer_lag: float | None = None


@dataclass(frozen=True)
class StandbyLag:
    """One standby as the primary's ``pg_stat_replication`` shows it."""

    name: str
    lag_bytes: int | None
    lag_seconds: float | None


@dataclass
class TelemetrySample:
    at: float  # epoch seconds when the reading started
    replicas: list[ReplicaReading] = field(default_factory=list)
    standbys: list[StandbyLag] = field(default_factory=list)
    worker: WorkerReading | None = None
    # Percent of one core per service (100 = one core busy); a process tree or a container.
    cpu_percent: dict[str, float] = field(default_factory=dict)
    # What could not be read this time (a replica that did not answer, no primary).
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PromSample:
    name: str
    labels: dict[str, str]
    value: float


_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str, names: Iterable[str] | None = None) -> list[PromSample]:
    """The samples of a Prometheus text exposition (comments and bad lines skipped); only the
    series in ``names`` when given (a cheap prefix test skips the rest, e.g. histograms)."""
    prefixes = tuple(names) if names is not None else ("",)
    samples = []
    for line in text.splitlines():
        if not line.startswith(prefixes) or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            continue
        try:
            value = float(match.group(4))
        except ValueError:
            continue
        if math.isnan(value):
            continue
        labels = {k: v.replace('\\"', '"') for k, v in _LABEL.findall(match.group(3) or "")}
        samples.append(PromSample(match.group(1), labels, value))
    return samples


def _sum(samples: Iterable[PromSample], name: str, **where: str) -> float | None:
    values = [
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in where.items())
    ]
    return sum(values) if values else None


def replica_reading(name: str, text: str) -> ReplicaReading:
    """What the generated app's /metrics says about load, the cache, the pool and the outbox."""
    samples = parse_prometheus(text, APP_SERIES)
    requests = [
        s.value
        for s in samples
        if s.name == HTTP_REQUESTS and s.labels.get("route") not in NOT_LOAD_ROUTES
    ]
    lookups = [s for s in samples if s.name == CACHE_REQUESTS]
    hits = [s.value for s in lookups if s.labels.get("result") in CACHE_HITS]
    return ReplicaReading(
        name=name,
        requests_total=sum(requests)
        if requests
        else (0.0 if _has(samples, HTTP_REQUESTS) else None),
        cache_hits_total=sum(hits) if lookups else None,
        cache_lookups_total=sum(s.value for s in lookups) if lookups else None,
        pool_in_use=_sum(samples, POOL_IN_USE),
        outbox_backlog=_sum(samples, OUTBOX_BACKLOG),
    )


def _has(samples: list[PromSample], name: str) -> bool:
    return any(s.name == name for s in samples)


def worker_reading(text: str) -> WorkerReading:
    """The worker's /metrics: events processed, failed, dead-lettered, the outbox and the lag."""
    samples = parse_prometheus(text, WORKER_SERIES.values())
    return WorkerReading(**{field: _sum(samples, name) for field, name in WORKER_SERIES.items()})


def app_metrics_path(*, backlog: bool, path: str = "/metrics") -> str:
    """``path`` asking a replica for the series ``replica_reading`` reads (``APP_READ``, and
    the outbox backlog when ``backlog``)."""
    names = [*APP_READ, *([OUTBOX_BACKLOG] if backlog else [])]
    return path + ("&" if "?" in path else "?") + "&".join(f"name[]={n}" for n in names)


def replica_backlog_wanted(last_worker: WorkerReading | None) -> bool:
    """Whether to ask one replica for the outbox backlog this sample: only when the worker's
    previous reading had none (no worker /metrics, or it did not answer), since counting the
    outbox costs a query on the primary each time it is asked."""
    return last_worker is None or last_worker.outbox_backlog is None


def scrape_metrics(host: str, port: int, timeout: float, path: str = "/metrics") -> str | None:
    """``GET path`` (``/metrics``) from a replica or the worker straight (never through nginx,
    which refuses it: a scrape without X-Forwarded-For is one the app answers); None when
    nothing answers in ``timeout`` or the answer is not 200."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read().decode(errors="replace")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    return body if response.status == 200 else None


class PrimarySenders:
    """The primary's ``pg_stat_replication`` over one kept connection, opened again when the
    primary is another node (its ``key``) or the connection broke; every query is bounded by a
    statement timeout."""

    def __init__(self, statement_timeout_ms: int = 500) -> None:
        self.statement_timeout_ms = statement_timeout_ms
        self._conn: Any = None
        self._key: str | None = None

    def read(self, key: str, connect: Callable[[], Any]) -> list[WalSender] | None:
        """The primary's WAL senders; None when it did not answer (the connection is dropped
        and opened again next time). ``connect`` opens an autocommit connection to ``key``."""
        import psycopg

        try:
            if self._conn is None or self._conn.closed or self._key != key:
                self.close()
                self._conn = connect()
                self._conn.execute(f"SET statement_timeout = {self.statement_timeout_ms}")
                self._key = key
            return sql.wal_senders(self._conn)
        except psycopg.Error:
            self.close()
            return None

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None
        self._key = None
