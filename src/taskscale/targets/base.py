"""The interface every target implements.

``replicate``, ``loadtest``, ``drill`` and the stack commands talk to a stack only through
``Target``: the core operations every target has (up, scale, status, logs, down, endpoints) and
capabilities it may have (``replication()``, ``load_generator()``, ``faults()``,
``telemetry()``; see ``targets.capabilities``), each None when the target does not offer it. The
typed results are in ``targets.model``.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

from taskscale.errors import UsageError
from taskscale.targets.model import DownResult, Endpoints, StackStatus, StepCallback, no_steps

if TYPE_CHECKING:  # kept off the import path of every command
    from taskscale.loadgen.job import LoadGenerator
    from taskscale.targets.capabilities import FaultInjector, Replication, TelemetrySource
    from taskscale.targets.logstream import LogStream


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
    if replicas < 1:
        raise UsageError(f"--replicas must be at least 1 (got {replicas})")
    if replicas > max_replicas:
        raise UsageError(
            f"--replicas {replicas} is above {maximum} of {max_replicas}",
            hint=f"raise {setting} in taskscale.toml",
        )
    return replicas


class Target(abc.ABC):
    """One way of running a project's stack (local processes, docker compose, Kubernetes)."""

    name: str
    # The document that says what this target offers (named when a capability is missing).
    guide: str = "README.md"

    @abc.abstractmethod
    def up(self, replicas: int, on_step: StepCallback = no_steps) -> StackStatus:
        """Bring the stack to ``replicas`` app replicas, changing only what differs; wait ready."""

    def scale(self, replicas: int, on_step: StepCallback = no_steps) -> StackStatus:
        """Change the replica count of a running stack without failing client requests."""
        return self.up(replicas, on_step)

    @abc.abstractmethod
    def status(self) -> StackStatus:
        """Every service with its health; never raises because a service is down."""

    @abc.abstractmethod
    def logs(self, service: str | None, tail: int, follow: bool) -> LogStream:
        """Log lines of one service (or all, prefixed by name); ``follow`` keeps yielding.
        A TargetError when the stack is not running, a UsageError for an unknown service."""

    @abc.abstractmethod
    def down(self, purge: bool = False, on_step: StepCallback = no_steps) -> DownResult:
        """Stop everything this target started and keep the data; ``purge`` also deletes the
        data (databases, volumes). Safe to repeat."""

    @abc.abstractmethod
    def endpoints(self) -> Endpoints:
        """Where clients reach the stack."""

    # ------------------------------------------------------------------ capabilities

    def replication(self) -> Replication | None:
        """PostgreSQL replication (status, and standbys or promotion when offered)."""
        return None

    def load_generator(self) -> LoadGenerator | None:
        """Where ``loadtest`` runs Locust: None means on this machine, against ``endpoints()``."""
        return None

    def faults(self) -> FaultInjector | None:
        """Fault injection for ``taskscale drill``."""
        return None

    def telemetry(self) -> TelemetrySource | None:
        """Server-side telemetry sampled during load tests."""
        return None
