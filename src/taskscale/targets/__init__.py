"""Deployment targets: one interface (``Target``), one implementation per kind of stack."""

from __future__ import annotations

import importlib.util

from taskscale.config import Project
from taskscale.errors import MissingBinary, UsageError
from taskscale.targets.base import Target

TARGETS = ("local", "minikube", "kubernetes")


def get_target(name: str, project: Project, *, context: str | None = None) -> Target:
    """The target called ``name`` for ``project`` (``context``: kubeconfig context, k8s only)."""
    if context and name not in ("minikube", "kubernetes"):
        raise UsageError(f"--context applies to the minikube and kubernetes targets, not {name}")
    if name == "local":
        from taskscale.targets.local import LocalTarget

        return LocalTarget(project)
    if name in ("minikube", "kubernetes"):
        if importlib.util.find_spec("kubernetes") is None:
            raise MissingBinary(
                f"the {name} target needs the official kubernetes client",
                hint="pip install 'taskscale[kubernetes]'",
            )
        from taskscale.targets.kubernetes import KubernetesTarget

        return KubernetesTarget(
            project, "minikube" if name == "minikube" else "kubernetes", context=context
        )
    raise UsageError(f"unknown target {name!r}: choose one of {', '.join(TARGETS)}")
