"""What one telemetry sample reads, cheaply: a process's CPU from /proc (as psutil reports
it), and the series a replica is asked for by name."""

from __future__ import annotations

import os
import time

import psutil

from taskscale import proc
from taskscale.proc import cpu_seconds
from taskscale.targets.telemetry import (
    APP_READ,
    OUTBOX_BACKLOG,
    app_metrics_path,
    parse_prometheus,
    replica_reading,
)


def test_cpu_seconds_counts_this_process_like_psutil_and_none_for_a_gone_one() -> None:
    before = cpu_seconds(os.getpid())
    assert before is not None
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    after = cpu_seconds(os.getpid())
    assert after is not None and after - before >= 0.15
    times = psutil.Process().cpu_times()
    assert abs((times.user + times.system) - after) < 0.1
    gone = proc.start(["true"], timeout=10)
    gone.finish("")
    assert cpu_seconds(gone.pid) is None


def test_a_replica_is_asked_for_what_it_is_read_for() -> None:
    path = app_metrics_path(backlog=False)
    assert path.startswith("/metrics?") and OUTBOX_BACKLOG not in path
    assert all(f"name[]={name}" in path for name in APP_READ)
    assert app_metrics_path(backlog=True).endswith(f"&name[]={OUTBOX_BACKLOG}")
    assert app_metrics_path(backlog=True, path="/m?x=1").startswith("/m?x=1&name[]=")
    # Every field of a replica's reading comes from a series asked for (a narrow answer).
    text = "\n".join(
        [
            'http_requests_total{method="GET",route="/tasks/",status="200"} 5.0',
            'cache_requests_total{resource="tasks",result="hit_redis"} 2.0',
            'cache_requests_total{resource="tasks",result="miss"} 1.0',
            'db_pool_connections_in_use{pool="primary"} 3.0',
            "outbox_backlog 4.0",
        ]
    )
    assert {s.name for s in parse_prometheus(text)} <= {*APP_READ, OUTBOX_BACKLOG}
    reading = replica_reading("app-1", text)
    assert (reading.requests_total, reading.cache_hits_total, reading.cache_lookups_total) == (
        5.0,
        2.0,
        3.0,
    )
    assert (reading.pool_in_use, reading.outbox_backlog) == (3.0, 4.0)
