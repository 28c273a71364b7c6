"""``taskscale manifests [--target minikube|kubernetes] [--out DIR] [--include-secrets]``: the
Kubernetes objects ``up`` would apply, printed as YAML or written one file per object."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from taskscale import console
from taskscale.cli.common import ProjectDir


def command(
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            "-t",
            help="minikube or kubernetes (default: the target of the last `up` when it is one "
            "of these, else kubernetes).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write one file per object into DIR (replacing a previous --out there) "
            "instead of printing them.",
            show_default=False,
        ),
    ] = None,
    include_secrets: Annotated[
        bool,
        typer.Option(
            "--include-secrets",
            help="Add the Secret app-secrets made from .env (up applies it; without this "
            "flag no secret value is printed or written).",
        ),
    ] = False,
    replicas: Annotated[
        int | None,
        typer.Option(
            "--replicas",
            "-r",
            help="As `up --replicas N`: the autoscaler's minimum (default: [stack] replicas).",
            show_default=False,
        ),
    ] = None,
    project: ProjectDir = None,
) -> None:
    """Print (or write) exactly the objects `taskscale up --target ...` applies."""
    from taskscale.stack import manifests  # settings and targets: when the command runs

    result = manifests(project, target, replicas=replicas, include_secrets=include_secrets, out=out)
    rendered = result.rendered
    for note in rendered.notes:
        console.note(note)
    if result.written is None:
        from taskscale.targets.kube.manifests import to_yaml

        console.print_text(to_yaml(rendered.objects))
    else:
        console.success(f"wrote {len(result.written)} objects to {out}")
    if not rendered.includes_secrets:
        console.note(
            "no Secret included: create app-secrets in the namespace (see docs/kubernetes.md) "
            "or pass --include-secrets"
        )
