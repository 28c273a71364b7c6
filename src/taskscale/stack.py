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
from taskscale.targets import active_target, get_target, remember_target, target_info
from taskscale.targets.base import Target
from taskscale.targets.model import DownResult, StackStatus, StepCallback, no_steps

if TYPE_CHECKING:  # off every command's start-up path (see docs/architecture.md)
    from taskscale.targets.capabilities import Promotion, Replication, Standbys
    from taskscale.targets.kube.manifests import Rendered
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


@dataclass(frozen=True)
class ManifestsResult:
    """What ``taskscale manifests`` produced: the objects ``up`` would apply, in order."""

    target: str
    rendered: Rendered
    written: list[Path] | None = None  # the files, with --out


def manifests(
    project_dir: Path | None,
    target: str | None,
    *,
    replicas: int | None,
    include_secrets: bool,
    out: Path | None,
) -> ManifestsResult:
    """Exactly the objects ``up --target TARGET [--replicas N]`` applies (its own code path),
    printed or written to ``out``; the Secret only with ``include_secrets``. ``target``
    defaults to the last ``up``'s when it has manifests, else kubernetes."""
    project = load_project(project_dir)
    if target is None:
        active = active_target(project)
        target = active if target_info(active).manifests else "kubernetes"
    if not target_info(target).manifests:
        from taskscale.targets.capabilities import require

        stack = get_target(target, project)
        require(None, stack.name, "manifests", stack.guide)
    from taskscale.targets.base import validate_replicas
    from taskscale.targets.kube import manifests as k8s

    settings = project.config.kubernetes
    wanted = replicas if replicas is not None else project.config.stack.replicas
    validate_replicas(
        wanted,
        settings.hpa_max_replicas,
        setting="[kubernetes] hpa_max_replicas",
        maximum="the autoscaler's maximum",
    )
    rendered = k8s.render(
        project, k8s.OVERLAYS[target], min_replicas=wanted, include_secrets=include_secrets
    )
    written = k8s.write_dir(rendered.objects, out) if out is not None else None
    return ManifestsResult(target, rendered, written)
