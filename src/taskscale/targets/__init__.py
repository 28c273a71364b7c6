"""Deployment targets: one interface (``Target``), one implementation per kind of stack."""

from __future__ import annotations

from taskscale.config import Project
from taskscale.errors import UsageError
from taskscale.targets.base import Target

TARGETS = ("local",)


def get_target(name: str, project: Project) -> Target:
    """The target called ``name`` for ``project``."""
    if name == "local":
        from taskscale.targets.local import LocalTarget

        return LocalTarget(project)
    raise UsageError(f"unknown target {name!r}: choose one of {', '.join(TARGETS)}")
