"""What a target can do beyond up / status / logs / down, asked for rather than tried.

``Target.replication()`` returns a ``Replication`` or None; a ``Replication`` always reads the
cluster's state and offers its write operations as further capabilities: ``standbys()`` (add or
remove streaming standbys, sync or async) and ``promotion()`` (switchover, failover, rejoin).
``Target.load_generator()`` (``taskscale.loadgen.job.LoadGenerator``) says where Locust runs.
The CLI asks for each capability and, when a target lacks it, raises ``Unsupported`` with one
message for every target (``require``).

``Target.faults()`` returns a ``FaultInjector`` (``taskscale drill``: signals to the supervised
processes locally, kill/pause/unpause on compose, pod delete on Kubernetes) and
``Target.telemetry()`` a ``TelemetrySource`` (what the servers did during a load test: requests
per replica, replication lag, cache, pool, backlog, CPU), each None when the target has none.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Literal, TypeVar

from taskscale.errors import TargetError
from taskscale.replication.model import ClusterStatus, ReplicationChange
from taskscale.targets.model import ServiceKind, StepCallback, no_steps
from taskscale.targets.telemetry import TelemetrySample

C = TypeVar("C")


class Unsupported(TargetError):
    """The target does not offer what the command needs."""


class Standbys(abc.ABC):
    """Adds and removes streaming standbys of the stack's primary."""

    @abc.abstractmethod
    def replicate(
        self, standbys: int | None, sync: bool | None, on_step: StepCallback = no_steps
    ) -> ReplicationChange:
        """Converge to ``standbys`` streaming standbys (None: keep the count, at least 1) and
        to synchronous (``sync``) or asynchronous commit (None: keep the mode)."""


class Promotion(abc.ABC):
    """Changes which node is the primary."""

    @abc.abstractmethod
    def switchover(
        self, to: str, max_lag_bytes: int, on_step: StepCallback = no_steps
    ) -> ReplicationChange:
        """Planned role swap without data loss; the old primary follows the new one."""

    @abc.abstractmethod
    def failover(
        self, to: str | None, force: bool, on_step: StepCallback = no_steps
    ) -> ReplicationChange:
        """Promote a standby (default: the most advanced) because the primary is down."""

    @abc.abstractmethod
    def rejoin(self, node: str, on_step: StepCallback = no_steps) -> ReplicationChange:
        """Bring a former primary or broken standby back as a standby (pg_rewind)."""


class Replication(abc.ABC):
    """PostgreSQL streaming replication of one stack."""

    @abc.abstractmethod
    def status(self) -> ClusterStatus:
        """Every node: role, state, LSNs, lag; a TargetError when the stack is not running."""

    def standbys(self) -> Standbys | None:
        return None

    def promotion(self) -> Promotion | None:
        return None


FaultKind = Literal["kill", "stop"]
FAULT_KINDS: tuple[FaultKind, ...] = ("kill", "stop")
Role = Literal["primary", "standby"]


@dataclass(frozen=True)
class FaultTarget:
    """A running service a fault can hit, by the name ``status`` shows."""

    name: str
    kind: ServiceKind
    # PostgreSQL nodes only: which role the node has now.
    role: Role | None = None


@dataclass(frozen=True)
class Injected:
    """A fault that was injected: when (epoch seconds, taken right after the call returned)
    and on what (a pid, a container, a pod), with what ``resume`` needs."""

    service: str
    kind: FaultKind
    at: float
    detail: str
    handle: str


# A task as the primary has it: (title, description, status).
TaskRow = tuple[str, str | None, str]


class FaultInjector(abc.ABC):
    """Injects faults into a running stack, and reads what the drill needs afterwards."""

    # The fault kinds this target can inject at all.
    kinds: frozenset[FaultKind] = frozenset(FAULT_KINDS)

    @abc.abstractmethod
    def targets(self) -> list[FaultTarget]:
        """Every running service a fault can hit; a TargetError when the stack is not running."""

    def refusal(self, kind: FaultKind, target: FaultTarget) -> str | None:
        """Why this target cannot inject ``kind`` into ``target`` (None: it can)."""
        if kind not in self.kinds:
            return f"{kind} faults are not supported on this target"
        return None

    @abc.abstractmethod
    def kill(self, target: FaultTarget) -> Injected:
        """Kill the service at once (SIGKILL or its equivalent): a crash, not a clean stop."""

    @abc.abstractmethod
    def stop(self, target: FaultTarget) -> Injected:
        """Freeze the service (SIGSTOP or its equivalent): a hang, undone by ``resume``."""

    @abc.abstractmethod
    def resume(self, injected: Injected) -> None:
        """Undo a ``stop`` (safe to repeat, and for a service that is gone)."""

    @abc.abstractmethod
    def serving(self, name: str) -> bool:
        """Whether the service runs and accepts connections now (a cheap, bounded probe)."""

    @abc.abstractmethod
    def heal(self, names: list[str], timeout: float, on_step: StepCallback = no_steps) -> list[str]:
        """After a drill: wait (up to ``timeout``) until the killed services ``names`` serve
        again, starting what nothing restarted; a note for each that is still down."""

    @abc.abstractmethod
    def read_tasks(self, ids: list[int]) -> dict[int, TaskRow]:
        """The tasks ``ids`` as the current primary has them (missing ids are absent)."""

    def restarts(self) -> dict[str, int]:
        """Restarts the target's own restart policy has made so far, per service (empty: the
        target keeps no count); the drill reports the difference its faults caused."""
        return {}


class TelemetrySource(abc.ABC):
    """Reads what the servers are doing, once per call (bounded in time, never raising because
    a service is down: what cannot be read is None, with a note)."""

    @abc.abstractmethod
    def sample(self) -> TelemetrySample:
        """One reading of every counter and gauge the target exposes."""

    def notes(self) -> list[str]:
        """What the report should say once about how the readings were taken (asked after
        the last sample, and after ``close``)."""
        return []

    def close(self) -> None:
        """Release connections and threads."""
        return None


def require(capability: C | None, target: str, command: str, guide: str) -> C:
    """``capability``, or the one error every target gives for a command it does not offer."""
    if capability is None:
        raise Unsupported(
            f"`taskscale {command}` is not supported on the {target} target",
            hint=f"see {guide} for what the {target} target offers",
        )
    return capability
