"""What targets return: one typed status model for every target, and the results of ``down``.

A service's row is the same on every target (name, kind, state, health, port, uptime, log tail);
what only one kind of runtime knows is its typed ``detail``: a process (local: pid and, for app
replicas, the blue/green slot it runs in), a container (compose) or a set of pods (Kubernetes:
ready / desired). ``to_dict`` flattens the detail into the row, so ``--json`` keeps one shape
per row with a ``runtime`` field saying which detail it carries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

ServiceKind = Literal[
    "app",
    "lb",
    "postgres",
    "redis",
    "worker",
    "kafka",
    "loadtest",
    "job",
    "monitoring",
    "supervisor",
]
# The two sets of replica ports a blue/green rollout alternates between (local target).
Slot = Literal["blue", "green"]
StepCallback = Callable[[str], None]


def no_steps(_: str) -> None:
    return None


@dataclass(frozen=True)
class ProcessDetail:
    """A service that is one process on this machine."""

    runtime: ClassVar[str] = "process"
    pid: int
    # App replicas only: the port set they run in; their names (app-1..N) never change.
    slot: Slot | None = None


@dataclass(frozen=True)
class ContainerDetail:
    """A service that is one container (docker compose)."""

    runtime: ClassVar[str] = "container"
    container_id: str
    pid: int | None = None


@dataclass(frozen=True)
class PodsDetail:
    """A service that is a workload of several pods (Kubernetes)."""

    runtime: ClassVar[str] = "pods"
    ready: int
    desired: int


ServiceDetail = ProcessDetail | ContainerDetail | PodsDetail


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    kind: ServiceKind
    port: int | None
    healthy: bool
    # running | dead | restarting | crash-loop | stopped | starting | degraded | completed:
    # "dead" means it was started and is gone (crash or kill) and nothing restarts it;
    # "restarting" that a restart policy is about to start it again (a back-off); "crash-loop"
    # that the policy gave up after too many restarts.
    state: str
    uptime_seconds: float | None = None
    log_tail: str | None = None
    detail: ServiceDetail | None = None
    # How often a restart policy started it again, and how its last process ended ("exit 1",
    # "SIGKILL", "unknown"); None where the target does not say.
    restarts: int | None = None
    last_exit: str | None = None

    @property
    def pid(self) -> int | None:
        return self.detail.pid if isinstance(self.detail, ProcessDetail | ContainerDetail) else None

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "detail"}
        if self.detail is not None:
            data["runtime"] = self.detail.runtime
            data.update(asdict(self.detail))
        return data


@dataclass(frozen=True)
class Endpoints:
    api: str
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StackStatus:
    target: str
    project: str
    replicas: int
    services: list[ServiceStatus]
    endpoints: Endpoints
    notes: list[str] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return any(s.state == "running" for s in self.services)

    @property
    def healthy(self) -> bool:
        return bool(self.services) and all(s.healthy for s in self.services)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "project": self.project,
            "replicas": self.replicas,
            "services": [s.to_dict() for s in self.services],
            "endpoints": {"api": self.endpoints.api, **self.endpoints.extra},
            "notes": self.notes,
            "healthy": self.healthy,
        }


@dataclass(frozen=True)
class DownResult:
    """What ``down`` stopped; ``purged``: the stack's data (database, volumes) was deleted."""

    target: str
    stopped: list[str]
    purged: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
