"""Stack operations: what the stack commands do, with the project and its target resolved once.

The CLI parses options and calls ``open_stack`` once per command, then one method; everything
that is not parsing or rendering (the default replica count, remembering the target of the last
``up``, asking the target for a capability) lives here, so ``--json`` and the tables render the
same results.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from taskscale.config import Project, load_project
from taskscale.targets import get_target, remember_target
from taskscale.targets.base import Target
from taskscale.targets.model import DownResult, StackStatus, StepCallback, no_steps

if TYPE_CHECKING:  # off every command's start-up path (see docs/architecture.md)
    from taskscale.targets.capabilities import Promotion, Replication, Standbys
    from taskscale.targets.logstream import LogStream


@dataclass(frozen=True)
class Stack:
    """A project and the target its stack runs on."""

    project: Project
    target: Target

    def up(self, replicas: int | None, on_step: StepCallback = no_steps) -> StackStatus:
        """Bring the stack to ``replicas`` (default: ``[stack] replicas``); remember the target
        so later commands without ``--target`` use it."""
        wanted = replicas if replicas is not None else self.project.config.stack.replicas
        result = self.target.up(wanted, on_step)
        remember_target(self.project, self.target.name)
        return result

    def status(self) -> StackStatus:
        return self.target.status()

    def logs(self, service: str | None, tail: int, follow: bool) -> LogStream:
        return self.target.logs(service, tail, follow)

    def down(self, purge: bool, on_step: StepCallback = no_steps) -> DownResult:
        return self.target.down(purge=purge, on_step=on_step)

    # ------------------------------------------------------------------ capabilities

    def replication(self, command: str = "replicate status") -> Replication:
        from taskscale.targets.capabilities import require

        return require(self.target.replication(), self.target.name, command, self.target.guide)

    def standbys(self) -> Standbys:
        from taskscale.targets.capabilities import require

        command = "replicate"
        return require(
            self.replication(command).standbys(), self.target.name, command, self.target.guide
        )

    def promotion(self, command: str) -> Promotion:
        from taskscale.targets.capabilities import require

        return require(
            self.replication(command).promotion(), self.target.name, command, self.target.guide
        )


def open_stack(project_dir: Path | None, target: str | None, context: str | None) -> Stack:
    """The project (found from ``project_dir`` or the working directory upwards) and its
    target (``target``, else the one of the last ``up``)."""
    project = load_project(project_dir)
    return Stack(project, get_target(target, project, context=context))
