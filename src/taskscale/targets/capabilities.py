"""What a target can do beyond up / status / logs / down, asked for rather than tried.

``Target.replication()`` returns a ``Replication`` or None; a ``Replication`` always reads the
cluster's state and offers its write operations as further capabilities: ``standbys()`` (add or
remove streaming standbys, sync or async) and ``promotion()`` (switchover, failover, rejoin).
``Target.load_generator()`` (``taskscale.loadgen.job.LoadGenerator``) says where Locust runs.
The CLI asks for each capability and, when a target lacks it, raises ``Unsupported`` with one
message for every target (``require``).

The next capability follows the same pattern: ``Target.faults() -> FaultInjector | None`` for
``taskscale drill`` (signals to supervised processes locally, kill/pause on compose, pod
delete on Kubernetes), an interface here and one method on each target that offers it.
"""

from __future__ import annotations

import abc
from typing import TypeVar

from taskscale.errors import TargetError
from taskscale.replication.model import ClusterStatus, ReplicationChange
from taskscale.targets.model import StepCallback, no_steps

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


def require(capability: C | None, target: str, command: str, guide: str) -> C:
    """``capability``, or the one error every target gives for a command it does not offer."""
    if capability is None:
        raise Unsupported(
            f"`taskscale {command}` is not supported on the {target} target",
            hint=f"see {guide} for what the {target} target offers",
        )
    return capability
