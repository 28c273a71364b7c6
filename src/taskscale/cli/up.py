"""``taskscale up [--replicas N]``: bring the stack up (or to N replicas), wait until ready."""

from __future__ import annotations

from typing import Annotated

import typer

from taskscale import console
from taskscale.cli import status as status_cli
from taskscale.cli.common import JsonFlag, KubeContext, ProjectDir, TargetName, open_stack


def command(
    replicas: Annotated[
        int | None,
        typer.Option(
            "--replicas",
            "-r",
            help="App replicas behind nginx (default: [stack] replicas in taskscale.toml).",
            show_default=False,
        ),
    ] = None,
    project: ProjectDir = None,
    target: TargetName = None,
    context: KubeContext = None,
    json_output: JsonFlag = False,
) -> None:
    """Start the stack (PostgreSQL, Redis, N app replicas, worker, nginx) or change it to N."""
    stack = open_stack(project, target, context)
    with console.progress("bringing the stack up") as step:
        result = stack.up(replicas, on_step=step)
    if json_output:
        console.print_json(result.to_dict())
        return
    status_cli.render(result)
    plural = "replica" if result.replicas == 1 else "replicas"
    console.success(f"ready: {result.endpoints.api} ({result.replicas} {plural})")
