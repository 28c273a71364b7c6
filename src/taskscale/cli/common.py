"""Options and helpers shared by the command modules (Annotated types: use as `x: JsonFlag`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from taskscale.stack import Stack


@dataclass
class _State:
    verbose: bool = False


state = _State()

ProjectDir = Annotated[
    Path | None,
    typer.Option(
        "--project",
        "-p",
        help="Project directory (default: the current directory or the nearest parent with "
        "taskscale.toml).",
        file_okay=False,
    ),
]

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


TargetName = Annotated[
    str | None,
    typer.Option(
        "--target",
        "-t",
        help="Where the stack runs: local (processes on this machine), compose (Docker Compose "
        "v2), minikube, or kubernetes (any cluster through a kube context). Default: the target "
        "of the last `up`, else local.",
        envvar="TASKSCALE_TARGET",
        show_default=False,
    ),
]

KubeContext = Annotated[
    str | None,
    typer.Option(
        "--context",
        help="kubeconfig context for the minikube/kubernetes targets (default: [kubernetes] "
        "context in taskscale.toml, else minikube / the current context).",
        show_default=False,
    ),
]


def open_stack(project_dir: Path | None, target: str | None, context: str | None) -> Stack:
    """``taskscale.stack.open_stack``, imported when a command runs: the project's settings
    (pydantic) and the targets are not needed to parse options or print ``--help``, and every
    command pays the CLI's start (see BENCHMARKS.md)."""
    from taskscale.stack import open_stack as open_project_stack

    return open_project_stack(project_dir, target, context)
