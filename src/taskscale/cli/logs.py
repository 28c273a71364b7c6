"""``taskscale logs [SERVICE] [-f] [--tail N]``: the logs of one service, or of all of them."""

from __future__ import annotations

import contextlib
from typing import Annotated

import typer

from taskscale import console
from taskscale.cli.common import KubeContext, ProjectDir, TargetName, open_stack


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
    lines = open_stack(project, target, context).logs(service, tail, follow)
    # Ctrl-C ends `-f` like any command (exit 130, one line); closing the stream as the
    # interrupt unwinds stops its readers and closes what they read.
    with contextlib.closing(lines):
        for line in lines:
            console.print_text(line)
