"""``taskscale down [--purge]``: stop everything the stack started; safe to run twice."""

from __future__ import annotations

from typing import Annotated

import typer

from taskscale import console
from taskscale.cli.common import JsonFlag, KubeContext, ProjectDir, TargetName, project_from
from taskscale.targets import get_target


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
    proj = project_from(project)
    stack = get_target(target, proj, context=context)
    with console.progress("stopping the stack") as step:
        result = stack.down(purge=purge, on_step=step)
    if json_output:
        console.print_json(
            {"target": result.target, "stopped": result.stopped, "purged": result.purged}
        )
        return
    if result.stopped:
        console.success(f"stopped: {', '.join(result.stopped)}")
    else:
        console.info("nothing running")
    if result.purged:
        console.info("deleted the stack's data")
