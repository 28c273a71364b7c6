"""The interface every target implements, and the typed results it returns.

``replicate`` and ``loadtest`` talk to a stack only through ``Target``; the CLI renders the
dataclasses below as tables or, with ``--json``, through ``to_dict``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from taskscale.loadtest.runner import LocustJob, LocustRun, ProgressCallback
    from taskscale.replication.model import ClusterStatus, ReplicationChange

ServiceKind = Literal[
    "app", "lb", "postgres", "redis", "worker", "kafka", "loadtest", "job", "monitoring"
]
StepCallback = Callable[[str], None]


def _no_steps(_: str) -> None:
    return None


def validate_replicas(
    replicas: int,
    max_replicas: int,
    *,
    setting: str = "[stack] max_replicas",
    maximum: str = "the maximum",
) -> int:
    """``replicas`` if 1 <= replicas <= max_replicas, else a UsageError (checked first).

    ``setting`` is the taskscale.toml setting that holds ``max_replicas`` (named in the hint)
    and ``maximum`` what the limit is called in the message."""
    from taskscale.errors import UsageError

    if replicas < 1:
        raise UsageError(f"--replicas must be at least 1 (got {replicas})")
    if replicas > max_replicas:
        raise UsageError(
            f"--replicas {replicas} is above {maximum} of {max_replicas}",
            hint=f"raise {setting} in taskscale.toml",
        )
    return replicas


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    kind: ServiceKind
    pid: int | None
    port: int | None
    healthy: bool
    # running | dead | stopped: "dead" means we started it and it is gone (crash or kill).
    state: str
    uptime_seconds: float | None = None
    log_tail: str | None = None
    # Pods ready / wanted, on targets where one service is several pods (Kubernetes).
    ready: int | None = None
    desired: int | None = None


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
        data = asdict(self)
        data["endpoints"] = {"api": self.endpoints.api, **self.endpoints.extra}
        data["healthy"] = self.healthy
        return data


@dataclass(frozen=True)
class DownResult:
    target: str
    stopped: list[str]
    purged: bool


class LoadGenerator(abc.ABC):
    """Runs Locust next to the stack (e.g. as pods in the cluster) instead of on this machine."""

    # The API as the generator reaches it (e.g. the app Service's in-cluster name).
    host: str

    @abc.abstractmethod
    def check_ready(self) -> None:
        """A TargetError when the app cannot take load yet (checked before any is sent)."""

    @abc.abstractmethod
    def run(self, job: LocustJob, on_progress: ProgressCallback | None) -> LocustRun:
        """Run ``job`` to completion (bounded in time), clean up, return the merged metrics."""


class Target(abc.ABC):
    """One way of running a project's stack (local processes, docker compose, Kubernetes)."""

    name: str

    @abc.abstractmethod
    def up(self, replicas: int, on_step: StepCallback = _no_steps) -> StackStatus:
        """Bring the stack to ``replicas`` app replicas, changing only what differs; wait ready."""

    def scale(self, replicas: int, on_step: StepCallback = _no_steps) -> StackStatus:
        """Change the replica count of a running stack without failing client requests."""
        return self.up(replicas, on_step)

    @abc.abstractmethod
    def status(self) -> StackStatus:
        """Every service with its health; never raises because a service is down."""

    @abc.abstractmethod
    def logs(self, service: str | None, tail: int, follow: bool) -> Iterator[str]:
        """Log lines of one service (or all, prefixed by name); ``follow`` keeps yielding."""

    @abc.abstractmethod
    def down(self, purge: bool = False, on_step: StepCallback = _no_steps) -> DownResult:
        """Stop everything this target started; ``purge`` also deletes data. Safe to repeat."""

    @abc.abstractmethod
    def endpoints(self) -> Endpoints:
        """Where clients reach the stack."""

    def load_generator(self) -> LoadGenerator | None:
        """Where ``loadtest`` runs Locust: None means on this machine, against ``endpoints()``."""
        return None

    # ------------------------------------------------------------------ replication
    # Targets that run PostgreSQL themselves implement these; the others say so clearly.

    def replicate(
        self, standbys: int | None, sync: bool | None, on_step: StepCallback = _no_steps
    ) -> ReplicationChange:
        """Converge to ``standbys`` streaming standbys (None: keep the count, at least 1)."""
        raise self.unsupported_replication("replicate")

    def replication_status(self) -> ClusterStatus:
        raise self.unsupported_replication("replicate status")

    def switchover(
        self, to: str, max_lag_bytes: int, on_step: StepCallback = _no_steps
    ) -> ReplicationChange:
        raise self.unsupported_replication("replicate switchover")

    def failover(
        self, to: str | None, force: bool, on_step: StepCallback = _no_steps
    ) -> ReplicationChange:
        raise self.unsupported_replication("replicate failover")

    def rejoin(self, node: str, on_step: StepCallback = _no_steps) -> ReplicationChange:
        raise self.unsupported_replication("replicate rejoin")

    def unsupported_replication(self, command: str) -> Exception:
        """The error for ``taskscale <command>`` on a target without it; targets override it
        to say what they offer instead."""
        from taskscale.errors import TargetError

        return TargetError(f"`taskscale {command}` is not available on the {self.name} target")
