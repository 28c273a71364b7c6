"""Telemetry of the compose stack, read from the host without going through nginx.

- Each app replica's and the worker's ``/metrics`` at the container's own address on the
  compose network (a Linux host routes to its bridge networks). The scrape carries no
  X-Forwarded-For, so the app answers it (nginx refuses ``/metrics``); replicas are named by
  their container name. Addresses come from the Docker SDK, looked up again every
  ``REFRESH_S`` or when a scrape fails (a restarted container gets a new one).
- ``pg_stat_replication`` over one kept psycopg connection to the primary's address, as the
  project's database owner (credentials from ``.env``); standbys by container name, as
  ``replicate status`` shows them.
- CPU per container from its cgroup's accounting file (cgroup v2 ``cpu.stat`` usage_usec, or
  v1 ``cpuacct.usage``), found through ``/proc/<pid>/cgroup`` of the container's main process:
  one small file read per container per sample, where Docker's stats API blocks ~1-2 s.

When the addresses cannot be reached (Docker Desktop keeps containers in a VM) or the cgroup
files cannot be read, the sample says so in ``notes``; nothing here raises because of a
service that is down.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskscale.targets.capabilities import TelemetrySource
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
REFRESH_S = 5.0
PG_TIMEOUT_MS = 500
APP_PORT = 8000
WORKER_PORT = 8001
PROC = Path("/proc")
CGROUP_ROOT = Path("/sys/fs/cgroup")


# ---------------------------------------------------------------------- pure parts


def cgroup_cpu_files(proc_cgroup: str, root: Path = CGROUP_ROOT) -> list[Path]:
    """Where a process's CPU usage is accounted, from its ``/proc/<pid>/cgroup`` text: the
    cgroup v2 ``cpu.stat`` (line ``0::/path``) or the v1 ``cpuacct.usage`` (a line whose
    controllers include cpuacct), most likely first."""
    files: list[Path] = []
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not path:
            continue
        relative = path.lstrip("/")
        if hierarchy == "0" and controllers == "":
            files.append(root / relative / "cpu.stat")
            files.append(root / "unified" / relative / "cpu.stat")  # hybrid hierarchy
        elif "cpuacct" in controllers.split(","):
            files.insert(0, root / controllers / relative / "cpuacct.usage")
            files.insert(1, root / "cpuacct" / relative / "cpuacct.usage")
    return files


def cpu_usage_seconds(path: Path, text: str) -> float | None:
    """Cumulative CPU seconds from a cgroup accounting file's text (None: not understood)."""
    if path.name == "cpuacct.usage":
        try:
            return int(text.strip()) / 1e9
        except ValueError:
            return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            try:
                return int(value) / 1e6
            except ValueError:
                return None
    return None


def service_cpu(per_container: dict[str, tuple[str, float]]) -> dict[str, float]:
    """CPU % per service: replicas of one service (``app``) are summed, as the local target sums
    a service's processes; ``per_container`` maps a container to (service, percent)."""
    totals: dict[str, float] = {}
    for service, percent in per_container.values():
        totals[service] = totals.get(service, 0.0) + percent
    return {service: round(total, 1) for service, total in sorted(totals.items())}


# ---------------------------------------------------------------------- the source


@dataclass
class _Container:
    name: str
    service: str
    ip: str | None
    hostname: str
    cpu_file: Path | None


class ComposeTelemetry(TelemetrySource):
    def __init__(
        self, project: Project, containers: Callable[[], list[Any]], service_label: str
    ) -> None:
        """``containers`` lists the stack's containers (Docker SDK objects); each one's
        service is its ``service_label`` label."""
        self.project = project
        self.list_containers = containers
        self.service_label = service_label
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="telemetry")
        self._containers: list[_Container] = []
        self._found_at = 0.0
        self._cpu_last: dict[str, tuple[float, float]] = {}  # name -> (monotonic, cpu seconds)
        self._senders = PrimarySenders(PG_TIMEOUT_MS)
        self._last_worker: WorkerReading | None = None

    def sample(self) -> TelemetrySample:
        at = time.time()
        notes: list[str] = []
        containers = self._current(notes)
        apps = [c for c in containers if c.service == "app"]
        worker = next((c for c in containers if c.service == "worker"), None)
        backlog = replica_backlog_wanted(self._last_worker)
        paths = [app_metrics_path(backlog=backlog and i == 0) for i in range(len(apps))]
        jobs = {
            self._pool.submit(self._scrape, c.ip, APP_PORT, path): c
            for c, path in zip(apps, paths, strict=True)
        }
        worker_job = (
            self._pool.submit(self._scrape, worker.ip, WORKER_PORT, "/metrics")
            if worker is not None
            else None
        )
        standbys = self._lags(containers, notes)
        cpu = self._cpu(containers, notes)
        replicas: list[ReplicaReading] = []
        missed = False
        for job, container in jobs.items():
            text = job.result()
            if text is None:
                missed = True
                notes.append(f"{container.name} did not answer /metrics at {container.ip}")
                continue
            replicas.append(replica_reading(container.name, text))
        worker_text = worker_job.result() if worker_job is not None else None
        if worker is not None and worker_text is None:
            missed = True
            notes.append(f"{worker.name} did not answer /metrics at {worker.ip}")
        if missed:
            self._found_at = 0.0  # a container may have a new address: look again next time
        self._last_worker = worker_reading(worker_text) if worker_text is not None else None
        return TelemetrySample(
            at=at,
            replicas=replicas,
            standbys=standbys,
            worker=self._last_worker,
            cpu_percent=cpu,
            notes=notes,
        )

    # ------------------------------------------------------------------ containers

    def _current(self, notes: list[str]) -> list[_Container]:
        now = time.monotonic()
        if now - self._found_at < REFRESH_S:
            return self._containers
        try:
            found = self.list_containers()
        except Exception as exc:  # the SDK raises several types for one cause
            notes.append(f"the Docker engine did not list the containers: {exc}")
            return self._containers
        known = {c.name: c for c in self._containers}
        containers = []
        for container in found:
            if container.status != "running":
                continue
            attrs = container.attrs
            networks = attrs.get("NetworkSettings", {}).get("Networks") or {}
            ip = next((n.get("IPAddress") for n in networks.values() if n.get("IPAddress")), None)
            name = str(container.name)
            previous = known.get(name)
            cpu_file = previous.cpu_file if previous is not None and previous.ip == ip else None
            if cpu_file is None:
                cpu_file = _cpu_file(int(attrs.get("State", {}).get("Pid") or 0))
            containers.append(
                _Container(
                    name=name,
                    service=str(container.labels.get(self.service_label, "")),
                    ip=ip or None,
                    hostname=str(attrs.get("Config", {}).get("Hostname", "")),
                    cpu_file=cpu_file,
                )
            )
        self._containers = containers
        self._found_at = now
        return containers

    @staticmethod
    def _scrape(ip: str | None, port: int, path: str) -> str | None:
        return scrape_metrics(ip, port, SCRAPE_TIMEOUT_S, path) if ip is not None else None

    # ------------------------------------------------------------------ PostgreSQL

    def _lags(self, containers: list[_Container], notes: list[str]) -> list[StandbyLag]:
        standbys = {c.hostname: c.name for c in containers if c.service == "postgres-standby"}
        primary = next((c for c in containers if c.service == "postgres"), None)
        if not standbys:
            return []
        if primary is None or primary.ip is None:
            notes.append("no running primary to read pg_stat_replication from")
            return []
        address = primary.ip
        senders = self._senders.read(address, lambda: self._connect(address))
        if senders is None:
            notes.append(f"the primary {primary.name} did not answer pg_stat_replication")
            return []
        return [
            StandbyLag(
                standbys.get(s.application_name, s.application_name),
                s.lag_bytes,
                s.replay_lag_seconds,
            )
            for s in senders
        ]

    def _connect(self, host: str) -> Any:
        import psycopg

        credentials = self.project.credentials()
        return psycopg.connect(
            host=host,
            port=5432,
            user=credentials.postgres_user,
            password=credentials.postgres_password,
            dbname=credentials.postgres_db,
            connect_timeout=1,
            autocommit=True,
        )

    # ------------------------------------------------------------------ CPU

    def _cpu(self, containers: list[_Container], notes: list[str]) -> dict[str, float]:
        """CPU % of one core per service since the previous sample (replicas summed)."""
        now = time.monotonic()
        per_container: dict[str, tuple[str, float]] = {}
        unreadable = []
        last: dict[str, tuple[float, float]] = {}
        for container in containers:
            used = _read_usage(container.cpu_file)
            if used is None:
                unreadable.append(container.name)
                continue
            last[container.name] = (now, used)
            before = self._cpu_last.get(container.name)
            if before is None or now <= before[0] or used < before[1]:
                continue  # the first reading primes the next one
            per_container[container.name] = (
                container.service,
                100.0 * (used - before[1]) / (now - before[0]),
            )
        self._cpu_last = last
        if unreadable:
            notes.append(f"no CPU accounting readable for {', '.join(unreadable)}")
        return service_cpu(per_container)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._senders.close()


def _cpu_file(pid: int) -> Path | None:
    """The first readable CPU accounting file of the process ``pid`` (None: none readable,
    e.g. the engine runs in a VM or another PID namespace)."""
    if pid <= 0:
        return None
    try:
        text = (PROC / str(pid) / "cgroup").read_text(encoding="utf-8")
    except OSError:
        return None
    for candidate in cgroup_cpu_files(text):
        if _read_usage(candidate) is not None:
            return candidate
    return None


def _read_usage(path: Path | None) -> float | None:
    if path is None:
        return None
    try:
        return cpu_usage_seconds(path, path.read_text(encoding="utf-8"))
    except OSError:
        return None
