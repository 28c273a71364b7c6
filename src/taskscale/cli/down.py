"""``taskscale down [--purge]``: stop everything the stack started; safe to run twice."""

from __future__ import annotations

from typing import Annotated

import typer

from taskscale import console
from taskscale.cli.common import JsonFlag, KubeContext, ProjectDir, TargetName, open_stack


def command(
    purge: Annotated[
        bool,
        typer.Option("--purge", help="Also delete the stack's data (database, logs)."),
    ] = False,
    project: ProjectDir = None,
    target: TargetName = None,
    context: KubeContext = None,
    json_output: JsonFlag = False,
) -> None:
    """Stop nginx, the worker, the replicas, Redis and PostgreSQL; free every port."""
    stack = open_stack(project, target, context)
    with console.progress("stopping the stack") as step:
        result = stack.down(purge, on_step=step)
    if json_output:
        console.print_json(result.to_dict())
        return
    if result.stopped:
        console.success(f"stopped: {', '.join(result.stopped)}")
    else:
        console.info("nothing running")
    if result.purged:
        console.info("deleted the stack's data")
