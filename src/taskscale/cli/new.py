"""``taskscale new NAME``: scaffold a Task API project."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from taskscale import console
from taskscale.choices import Auth, Broker
from taskscale.cli.common import JsonFlag


def command(
    name: Annotated[str, typer.Argument(help="Project name: a DNS-1123 label such as tasks-api.")],
    output_dir: Annotated[
        Path, typer.Option("--output-dir", "-o", help="Directory to create the project in.")
    ] = Path("."),
    broker: Annotated[
        Broker, typer.Option("--broker", help="Event broker for task notifications.")
    ] = "redis",
    auth: Annotated[
        Auth,
        typer.Option(
            "--auth",
            help="jwt: bearer tokens, users and per-user tasks; none: the tutorial's open API.",
        ),
    ] = "jwt",
    force: Annotated[
        bool, typer.Option("--force", help="Write into a non-empty directory, overwriting files.")
    ] = False,
    no_git: Annotated[bool, typer.Option("--no-git", help="Do not run git init.")] = False,
    json_output: JsonFlag = False,
) -> None:
    """Generate a production-shaped Task Management API project."""
    # Imported here: the scaffolder (Jinja2) is not needed to start any other command.
    from taskscale.scaffold import NewProjectSpec, create_project

    result = create_project(
        NewProjectSpec(
            name=name,
            output_dir=output_dir,
            broker=broker,
            auth=auth,
            force=force,
            git=not no_git,
        )
    )
    if json_output:
        console.print_json(result.to_dict())
        return
    for warning in result.warnings:
        console.warn(warning)
    console.success(
        f"Created {result.path} ({len(result.files)} files, broker: {broker}, auth: {auth})."
    )
    if result.reused_secrets:
        console.info("Kept the secrets of the existing .env.")
    console.info(f"Next: cd {result.path} && taskscale up")
