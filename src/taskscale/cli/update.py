"""``taskscale update``: merge the current template into a generated project."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from taskscale import console
from taskscale.cli.common import JsonFlag, ProjectDir
from taskscale.errors import UpdateConflicts

if TYPE_CHECKING:
    from taskscale.scaffold.update import UpdateResult


def command(
    answers: Annotated[
        list[str] | None,
        typer.Option(
            "--answers",
            "-a",
            metavar="KEY=VALUE",
            help="Change an answer given to `taskscale new`, as KEY=VALUE (e.g. broker=kafka); "
            "repeat for several. With --adopt: the answers the project was generated with.",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Print the diff the update would apply; change nothing."),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Update even with uncommitted changes in git.")
    ] = False,
    adopt: Annotated[
        bool,
        typer.Option(
            "--adopt",
            help="For a project without .taskscale-answers.toml: take the shipped template that "
            "matches its files best as the base, then update.",
        ),
    ] = False,
    project: ProjectDir = None,
    json_output: JsonFlag = False,
) -> None:
    """Bring the project up to this taskscale's template, keeping your changes (3-way merge)."""
    from taskscale.scaffold.answers import parse_pairs
    from taskscale.scaffold.update import UpdateSpec, update_project

    result = update_project(
        UpdateSpec(
            project=project,
            answers=parse_pairs(answers or []),
            dry_run=dry_run,
            force=force,
            adopt=adopt,
        )
    )
    if json_output:
        console.print_json(result.to_dict())
    else:
        _render(result)
    if result.conflicts:
        raise UpdateConflicts(
            f"{len(result.conflicts)} file(s) with conflicts: {', '.join(result.conflicts)}",
            hint="resolve the <<<<<<< / ======= / >>>>>>> markers"
            + (" after running without --dry-run" if result.dry_run else ""),
        )


def _render(result: UpdateResult) -> None:
    if result.recovered:
        console.warn("an interrupted update was undone first: the project was restored")
    for warning in result.warnings:
        console.warn(warning)
    if result.dry_run:
        console.print_text(result.diff.rstrip("\n") if result.diff else "(no changes)")
    rows = [(f.path, f.action, f.detail) for f in result.files]
    if rows:
        console.table(None, ["file", "action", "detail"], rows)
    verb = "Would update" if result.dry_run else "Updated"
    adopted = " (adopted)" if result.adopted else ""
    console.success(
        f"{verb} {result.path}{adopted}: template {result.old_template} -> {result.new_template}, "
        f"{len(result.changed)} file(s) changed."
    )
