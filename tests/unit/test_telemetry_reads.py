"""What one telemetry sample reads, cheaply: a process's CPU and the process tree from /proc
(as psutil reports them), the series a replica is asked for by name, and the outbox backlog
asked of a replica only while the worker does not report it."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import psutil

from taskscale import proc
from taskscale.loadtest.telemetry import build_telemetry
from taskscale.proc import children_by_parent, cpu_seconds
from taskscale.targets.local.state import ServiceRecord, StackState
from taskscale.targets.local.telemetry import LocalTelemetry
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


def test_children_by_parent_finds_a_child_like_psutil() -> None:
    with proc.start(["sleep", "30"], timeout=40) as child:
        mine = children_by_parent().get(os.getpid(), [])
        assert child.pid in mine
        assert sorted(mine) == sorted(p.pid for p in psutil.Process().children())
        os.kill(child.pid, 9)
        child.finish("", check=False)


class _Metrics(BaseHTTPRequestHandler):
    """Answers /metrics with the lines of the server's ``text`` asked for by ``name[]`` (all
    without it, as the generated app does) and records the paths asked."""

    def do_GET(self) -> None:
        server = cast("Any", self.server)
        server.paths.append(self.path)
        names = tuple(parse_qs(urlsplit(self.path).query).get("name[]", [""]))
        text = "".join(f"{line}\n" for line in server.text.splitlines() if line.startswith(names))
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _metrics_server(text: str) -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    server.paths, server.text = [], text
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


class _Supervisor:
    def __init__(self, records: list[ServiceRecord]) -> None:
        self.state = StackState(services={r.name: r for r in records})

    def load(self) -> StackState:
        return self.state

    def alive(self, record: ServiceRecord) -> bool:
        return True


def test_a_replica_is_asked_for_the_backlog_only_while_the_worker_does_not_report_it(
    tmp_path: Path,
) -> None:
    app_text = 'http_requests_total{route="/tasks/"} 1.0\noutbox_backlog 7.0\n'
    with (
        _metrics_server(app_text) as app1,
        _metrics_server(app_text) as app2,
        _metrics_server("outbox_backlog 3.0\n") as worker,
    ):

        def record(name: str, kind: str, port: int) -> ServiceRecord:
            return ServiceRecord(name, kind, os.getpid(), port, "log", [])  # type: ignore[arg-type]

        records = [
            record("app-1", "app", app1.server_port),
            record("app-2", "app", app2.server_port),
            record("worker", "worker", worker.server_port),
        ]
        project = SimpleNamespace(
            state_dir=tmp_path, config=SimpleNamespace(project=SimpleNamespace(name="p"))
        )
        source = LocalTelemetry(cast("Any", project), cast("Any", _Supervisor(records)), None)  # type: ignore[arg-type]
        try:
            asked = [source.sample() for _ in range(2)]  # the worker's first reading is unknown
            assert [OUTBOX_BACKLOG in p for p in app1.paths] == [True, False]
            assert not any(OUTBOX_BACKLOG in p for p in app2.paths)
            worker.text = "events_processed_total 1.0\n"  # a worker without the gauge
            asked += [source.sample() for _ in range(2)]
            assert [OUTBOX_BACKLOG in p for p in app1.paths] == [True, False, False, True]
        finally:
            source.close()
    telemetry = build_telemetry(asked, origin=asked[0].at, interval=1.0)
    assert [p.outbox_backlog for p in telemetry.samples] == [3.0, 3.0, None, 7.0]
