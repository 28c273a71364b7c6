"""Telemetry of the local stack: what each process reports, read from this machine.

- Each app replica's ``/metrics`` on its own port (nginx refuses ``/metrics``; a scrape from
  loopback carries no X-Forwarded-For, so the replica answers), in parallel, 0.5 s each, asking
  by name for the series it reads (``app_metrics_path``).
- The worker's ``/metrics`` when it serves one (its port from the service record).
- ``pg_stat_replication`` on the primary over one kept superuser connection (unix socket):
  lag per standby in bytes and seconds, by node name (each standby's application_name).
- CPU per service: the service's process and its children (PostgreSQL's backends, nginx's
  workers; found from every process's parent in /proc, ``proc.children_by_parent``), each
  read from /proc (``proc.cpu_seconds``), percent of one core since the last sample.

Nothing here goes through nginx, so a load test's request count still equals nginx's access
log. One sample costs a few milliseconds of this process's CPU, a narrow scrape per replica
and the worker's, and one small outbox query (the worker's; a replica is asked for the backlog
only while the worker does not report it); bench/drill.py measures it.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from taskscale.proc import children_by_parent, cpu_seconds
from taskscale.targets.capabilities import TelemetrySource
from taskscale.targets.local.state import ServiceRecord
from taskscale.targets.local.supervisor import Supervisor
from taskscale.targets.local.topology import Nodes, Topology
from taskscale.targets.telemetry import (
    PrimarySenders,
    ReplicaReading,
    StandbyLag,
    TelemetrySample,
    WorkerReading,
    app_metrics_path,
    replica_backlog_wanted,
    replica_reading,
    scrape_metrics,
    worker_reading,
)

if TYPE_CHECKING:
    from taskscale.config import Project

SCRAPE_TIMEOUT_S = 0.5
TREE_REFRESH_S = 5.0
PG_TIMEOUT_MS = 500


class LocalTelemetry(TelemetrySource):
    def __init__(self, project: Project, supervisor: Supervisor, nodes: Nodes) -> None:
        self.project = project
        self.supervisor = supervisor
        self.nodes = nodes
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="telemetry")
        self._senders = PrimarySenders(PG_TIMEOUT_MS)
        self._last_worker: WorkerReading | None = None
        self._trees: dict[str, list[int]] = {}  # service -> pids of its process tree
        self._cpu_seen: dict[int, tuple[float, float]] = {}  # pid -> (CPU seconds, when)
        self._roots: dict[str, int] = {}
        self._trees_at = 0.0

    def sample(self) -> TelemetrySample:
        at = time.time()
        state = self.supervisor.load()
        live = [r for r in state.services.values() if self.supervisor.alive(r)]
        notes: list[str] = []
        apps = sorted((r for r in live if r.kind == "app"), key=lambda r: (r.name, r.started_at))
        worker = next((r for r in live if r.kind == "worker"), None)
        ports = [(r, r.port) for r in apps if r.port is not None]
        backlog = replica_backlog_wanted(self._last_worker)
        jobs = {
            self._pool.submit(self._scrape, port, app_metrics_path(backlog=backlog and i == 0)): r
            for i, (r, port) in enumerate(ports)
        }
        worker_job = (
            self._pool.submit(self._scrape, worker.port, "/metrics")
            if worker is not None and worker.port is not None
            else None
        )
        standbys = self._lags(notes)
        cpu = self._cpu(live)
        replicas: list[ReplicaReading] = []
        prefix = self.project.config.project.name
        for job, record in jobs.items():
            text = job.result()
            if text is None:
                notes.append(f"{record.name} did not answer /metrics")
                continue
            replicas.append(replica_reading(f"{prefix}-{record.name}", text))
        worker_text = worker_job.result() if worker_job is not None else None
        self._last_worker = worker_reading(worker_text) if worker_text is not None else None
        return TelemetrySample(
            at=at,
            replicas=replicas,
            standbys=standbys,
            worker=self._last_worker,
            cpu_percent=cpu,
            notes=notes,
        )

    @staticmethod
    def _scrape(port: int, path: str) -> str | None:
        return scrape_metrics("127.0.0.1", port, SCRAPE_TIMEOUT_S, path)

    # ------------------------------------------------------------------ PostgreSQL

    def _lags(self, notes: list[str]) -> list[StandbyLag]:
        if not Topology.exists(self.project.state_dir):
            return []
        primary = self.nodes.primary_name()
        senders = self._senders.read(primary, lambda: self.nodes.node(primary).connect(timeout=1))
        if senders is None:
            notes.append(f"the primary {primary} did not answer pg_stat_replication")
            return []
        return [StandbyLag(s.application_name, s.lag_bytes, s.replay_lag_seconds) for s in senders]

    # ------------------------------------------------------------------ CPU

    def _cpu(self, records: list[ServiceRecord]) -> dict[str, float]:
        """Percent of one core per service since the previous sample (its process tree).

        Finding children means reading every process's parent on the system (~5 ms), so the
        trees are found again only every ``TREE_REFRESH_S`` or when a service's pid changed;
        in between, each known process costs one read of its /proc stat file
        (``proc.cpu_seconds``). A process seen for the first time only primes the next
        sample."""
        roots = {record.name: record.pid for record in records}
        now = time.monotonic()
        if roots != self._roots or now - self._trees_at > TREE_REFRESH_S:
            self._refresh_trees(roots)
            self._trees_at = now
        usage: dict[str, float] = {}
        seen: dict[int, tuple[float, float]] = {}
        for name, pids in self._trees.items():
            total = 0.0
            for pid in pids:
                used = cpu_seconds(pid)
                if used is None:
                    continue
                seen[pid] = (used, now)
                before = self._cpu_seen.get(pid)
                if before is not None and now > before[1] and used >= before[0]:
                    total += 100.0 * (used - before[0]) / (now - before[1])
            usage[name] = round(total, 1)
        self._cpu_seen = seen
        return usage

    def _refresh_trees(self, roots: dict[str, int]) -> None:
        children = children_by_parent()
        self._trees = {}
        for name, root in roots.items():
            pids, queue = [], [root]
            while queue:
                pid = queue.pop()
                pids.append(pid)
                queue.extend(children.get(pid, []))
            self._trees[name] = pids
        self._roots = dict(roots)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._senders.close()
