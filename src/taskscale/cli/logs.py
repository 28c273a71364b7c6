"""``taskscale logs [SERVICE] [-f] [--tail N]``: the logs of one service, or of all of them."""

from __future__ import annotations

from typing import Annotated

import typer

from taskscale import console
from taskscale.cli.common import KubeContext, ProjectDir, TargetName, project_from
from taskscale.targets import get_target


def command(
    service: Annotated[
        str | None,
        typer.Argument(help="A service (postgres, redis, app-1, nginx...); all if omitted."),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    tail: Annotated[
        int, typer.Option("--tail", "-n", min=0, help="Lines to show from the end of each log.")
    ] = 50,
    project: ProjectDir = None,
    target: TargetName = None,
    context: KubeContext = None,
) -> None:
    """Print a service's log (or every log, prefixed by service name)."""
    lines = get_target(target, project_from(project), context=context).logs(service, tail, follow)
    try:
        for line in lines:
            console.print_text(line)
    except KeyboardInterrupt:
        return
