"""Health of a local stack's services: one status row per record, and the notes under them."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from taskscale import proc
from taskscale.config import Project
from taskscale.targets import ports
from taskscale.targets.local import probes, redis
from taskscale.targets.local.fleet import replica_index
from taskscale.targets.local.state import SUPERVISOR_OWNER as SUPERVISOR
from taskscale.targets.local.state import ServiceRecord, StackState
from taskscale.targets.local.supervisor import Supervisor
from taskscale.targets.model import ProcessDetail, ServiceKind, ServiceStatus

LOG_TAIL_LINES = 10
HTTP_TIMEOUT = 2.0
KIND_ORDER: dict[ServiceKind, int] = {
    "postgres": 0,
    "redis": 1,
    "kafka": 2,
    "app": 3,
    "worker": 4,
    "lb": 5,
    "supervisor": 6,
}


def service_order(record: ServiceRecord) -> tuple[int, int, str]:
    """postgres, redis, kafka, app-1..N (blue before green while a rollout runs), worker,
    nginx, the supervisor."""
    index = replica_index(record.name) if record.kind == "app" else 0
    return KIND_ORDER.get(record.kind, 9), index, record.slot or ""


class Health:
    def __init__(self, project: Project, supervisor: Supervisor) -> None:
        self.project = project
        self.config = project.config
        self.supervisor = supervisor

    def supervised(self, state: StackState) -> bool:
        """True while the stack's supervisor process runs (crashed services come back)."""
        record = state.named(SUPERVISOR)
        return record is not None and self.supervisor.alive(record)

    def statuses(self, state: StackState) -> list[ServiceStatus]:
        records = sorted(state.services.values(), key=service_order)
        supervised = self.supervised(state)
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(lambda r: self.status(r, supervised), records))

    def status(self, record: ServiceRecord, supervised: bool = False) -> ServiceStatus:
        """One row; ``supervised``: the supervisor process runs, so a dead service (not in a
        crash loop) is about to be restarted."""
        detail = ProcessDetail(pid=record.pid, slot=record.slot)
        restarts = record.restarts if record.kind != SUPERVISOR else None
        if not self.supervisor.alive(record):
            if record.crash_loop:
                state = "crash-loop"
            elif (
                supervised
                and record.kind != SUPERVISOR
                and self.supervisor.spec(record) is not None  # else it cannot restart it
            ):
                state = "restarting"
            else:
                state = "dead"
            return ServiceStatus(
                name=record.name,
                kind=record.kind,
                port=record.port,
                healthy=False,
                state=state,
                log_tail=proc.file_tail(record.log_path, LOG_TAIL_LINES),
                detail=detail,
                restarts=restarts,
                last_exit=record.last_exit,
            )
        return ServiceStatus(
            name=record.name,
            kind=record.kind,
            port=record.port,
            healthy=self.healthy(record),
            state="running",
            uptime_seconds=round(time.time() - record.started_at, 1),
            detail=detail,
            restarts=restarts,
            last_exit=record.last_exit,
        )

    def healthy(self, record: ServiceRecord) -> bool:
        port = record.port
        if record.kind in ("worker", SUPERVISOR):
            return True
        if port is None:
            return False
        if record.kind == "app":
            return probes.status(port, "/healthz", HTTP_TIMEOUT) == 200
        if record.kind == "lb":
            return probes.status(port, "/healthz", HTTP_TIMEOUT) is not None
        if record.kind == "redis":
            return redis.ping(port, self.project.credentials().redis_password)
        return ports.port_listening(port)

    def notes(
        self, state: StackState, services: list[ServiceStatus], routed: int | None
    ) -> list[str]:
        """The connection budget, a router that disagrees with the state, dead services."""
        notes: list[str] = []
        if not services:
            notes.append("not running: start it with `taskscale up`")
            return notes
        apps = len(state.of_kind("app"))
        pool = self.config.postgres.pool_size
        max_conn = self.config.postgres.max_connections
        # Replicas and the worker each hold one SQLAlchemy pool of pool_size connections (plus
        # up to the app's DB_MAX_OVERFLOW, 10 by default, under bursts).
        steady = (apps + 1) * pool
        verdict = (
            "ok" if steady < max_conn else "TOO MANY: lower pool_size or raise max_connections"
        )
        notes.append(
            f"postgres connections: ({apps} replica{'s' if apps != 1 else ''} + worker) x "
            f"pool_size {pool} = {steady} "
            f"of max_connections {max_conn} ({verdict}; overflow adds up to 10 per process)"
        )
        if routed is not None and routed != apps:
            notes.append(f"nginx routes to {routed} replicas but {apps} are recorded")
        notes += self._restart_notes(state, services)
        return notes

    def _restart_notes(self, state: StackState, services: list[ServiceStatus]) -> list[str]:
        notes: list[str] = []
        supervisor = next((s for s in services if s.kind == SUPERVISOR), None)
        if supervisor is not None and supervisor.state != "running":
            notes.append(
                "the supervisor process is not running: crashed services stay down until "
                "`taskscale up` starts it again"
            )
        elif supervisor is None and self.config.restart.policy == "always":
            notes.append(
                "no supervisor process (stack started before restarts existed): "
                "`taskscale up` starts it"
            )
        dead = [s.name for s in services if s.state == "dead" and s.kind != SUPERVISOR]
        if dead:
            notes.append(f"dead: {', '.join(dead)} (run `taskscale up` to restart)")
        restarting = [s.name for s in services if s.state == "restarting"]
        if restarting:
            notes.append(f"restarting: {', '.join(restarting)} (the supervisor starts it again)")
        window = self.config.restart.window_seconds
        for service in services:
            if service.state == "crash-loop":
                notes.append(
                    f"{service.name} is in a crash loop: {service.restarts} restarts within "
                    f"{window:g}s, last exit {service.last_exit or 'unknown'}; the supervisor "
                    "gave up on it: fix the cause (the end of its log is below), then "
                    "`taskscale up`"
                )
        return notes
