"""Deployment targets: one interface (``Target``), one implementation per kind of stack.

Commands take ``--target``; without it they use the target the project's last successful
``up`` used (``.taskscale/target``), else ``local``. So after ``up --target compose``, plain
``status``, ``logs``, ``loadtest`` and ``down`` talk to the compose stack.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from taskscale.config import Project
from taskscale.errors import MissingBinary, UsageError
from taskscale.targets.base import Target


@dataclass(frozen=True)
class TargetInfo:
    """What commands must know about a target before creating it (no client, no I/O)."""

    name: str
    # Where `loadtest` runs Locust: None on this machine (one process per core by default),
    # else the default and maximum number of worker pods it runs next to the stack.
    load_workers: tuple[int, int] | None = None
    # Whether `taskscale manifests` can print what `up` applies (deploy/k8s).
    manifests: bool = False


REGISTRY: dict[str, TargetInfo] = {
    info.name: info
    for info in (
        TargetInfo("local"),
        TargetInfo("compose"),
        TargetInfo("minikube", load_workers=(2, 100), manifests=True),
        TargetInfo("kubernetes", load_workers=(2, 100), manifests=True),
    )
}
TARGETS = tuple(REGISTRY)
DEFAULT_TARGET = "local"
ACTIVE_FILE = "target"


def target_info(name: str) -> TargetInfo:
    """``name``'s entry, or the one error for an unknown target."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown target {name!r}: choose one of {', '.join(TARGETS)}") from None


def active_target(project: Project) -> str:
    """The target of the project's last successful ``up`` (kept after ``down``)."""
    try:
        name = (project.state_dir / ACTIVE_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return DEFAULT_TARGET
    return name if name in TARGETS else DEFAULT_TARGET


def remember_target(project: Project, name: str | None) -> None:
    """Record ``name`` as the active target (None: forget it, back to the default)."""
    path = project.state_dir / ACTIVE_FILE
    if name is None or name == DEFAULT_TARGET:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(name + "\n", encoding="utf-8")


def get_target(name: str | None, project: Project, *, context: str | None = None) -> Target:
    """The target called ``name`` (None: the active one) for ``project``.

    ``context`` is the kubeconfig context (minikube/kubernetes only).
    """
    if name is None:
        name = active_target(project)
    target_info(name)
    if context and name not in ("minikube", "kubernetes"):
        raise UsageError(f"--context applies to the minikube and kubernetes targets, not {name}")
    if name == "local":
        from taskscale.targets.local import LocalTarget

        return LocalTarget(project)
    if name == "compose":
        from taskscale.targets.compose import ComposeTarget

        return ComposeTarget(project)
    if importlib.util.find_spec("kubernetes") is None:
        raise MissingBinary(
            f"the {name} target needs the official kubernetes client",
            hint="pip install 'taskscale[kubernetes]'",
        )
    from taskscale.targets.kube.target import KubernetesTarget

    return KubernetesTarget(
        project, "minikube" if name == "minikube" else "kubernetes", context=context
    )
