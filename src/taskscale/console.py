"""The only module that talks to the terminal (rich lives here and nowhere else)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

# When stdout is not a terminal (CI logs, pipes) rich would assume 80 columns and squeeze wide
# tables into ellipses; a log has no width limit, so give tables room.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def info(message: str) -> None:
    """A status line for people; goes to stderr so stdout stays clean for --json."""
    err.print(message)


def success(message: str) -> None:
    err.print(f"[green]{message}[/green]")


def note(message: str) -> None:
    """Information a reader should see (not a problem): ``note: ...`` on stderr."""
    err.print(f"[dim]note:[/dim] {_escape(message)}")


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {message}", markup=True)


def error_line(message: str, hint: str | None = None, detail: str | None = None) -> None:
    """One red line on stderr (the hint joins it); ``detail`` (e.g. a log tail) follows, dimmed."""
    line = f"{message} ({hint})" if hint else message
    err.print(f"[bold red]error:[/bold red] {_escape(line)}")
    if detail:
        err.print(_escape(detail.rstrip()), style="dim")


def print_json(data: Any) -> None:
    """Machine output: plain JSON on stdout, no colour, no wrapping."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def print_text(text: str) -> None:
    out.print(text, markup=False)


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=title, title_justify="left")
    for column in columns:
        t.add_column(column)
    for row in rows:
        t.add_row(*(_cell(value) for value in row))
    out.print(t)


@contextmanager
def progress(description: str) -> Iterator[Callable[[str], None]]:
    """A spinner with elapsed time on stderr; calling the yielded function changes its text."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task_id = bar.add_task(description, total=None)

        def step(text: str) -> None:
            bar.update(task_id, description=text)

        yield step


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _escape(str(value))


def _escape(text: str) -> str:
    return text.replace("[", r"\[")
