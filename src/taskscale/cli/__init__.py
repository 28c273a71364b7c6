"""The ``taskscale`` command: Typer wiring and the one error handler.

Each command lives in its own module as ``command(...)``: it parses options, calls one library
function and renders the result. Nothing here holds logic.
"""

from __future__ import annotations

import atexit
import gc
import sys

import typer

from taskscale import __version__, console
from taskscale.cli import down, loadtest, logs, new, replicate, report, status, up, update
from taskscale.cli.common import state
from taskscale.errors import TaskscaleError

# At exit, skip the interpreter's last garbage collections over every loaded module: ~0.15 s
# of each command's wall time once the local target's modules are in. Only cyclic garbage goes
# unfreed (the OS reclaims it); files are closed by `with`, stdout/stderr are still flushed and
# every other atexit handler still runs. Nothing is frozen before the process exits, so
# importing this module as a library (tests, benches) changes nothing while it runs.
atexit.register(gc.freeze)

app = typer.Typer(
    name="taskscale",
    help="Generate a Task API, run it with N replicas behind nginx, replicate PostgreSQL "
    "and load-test it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

app.command("new")(new.command)
# Commands of later issues register here, one line each.
app.command("loadtest")(loadtest.command)
app.command("report")(report.command)
app.command("up")(up.command)
app.command("status")(status.command)
app.command("logs")(logs.command)
app.command("down")(down.command)
app.add_typer(replicate.app, name="replicate")
app.command("update")(update.command)


def _version(value: bool) -> None:
    if value:
        console.print_text(f"taskscale {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Show tracebacks and extra detail."
    ),
    version: bool = typer.Option(
        False,
        "--version",
        callback=_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    state.verbose = verbose


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; turn every TaskscaleError into one red line and its exit code."""
    try:
        # Outside standalone mode Typer returns the exit code of a typer.Exit raised inside a
        # command, and turns Ctrl-C into Exit(130): pass those on instead of exiting 0.
        returned = app(args=argv, prog_name="taskscale", standalone_mode=False)
        if returned == 130:
            console.error_line("interrupted")
        if isinstance(returned, int):
            return returned
    except TaskscaleError as exc:
        if state.verbose:
            console.err.print_exception()
        console.error_line(exc.message, hint=exc.hint, detail=exc.detail)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        console.error_line("aborted")
        return 130
    except KeyboardInterrupt:
        console.error_line("interrupted")
        return 130
    except Exception as exc:  # click usage errors and anything unexpected
        return _handle_other(exc)
    return 0


def _handle_other(exc: Exception) -> int:
    # Typer >= 0.20 vendors click (typer._click); older ones use click itself. Both raise
    # exceptions with format_message() and exit_code for usage errors.
    if type(exc).__name__ == "NoArgsIsHelpError":
        ctx = getattr(exc, "ctx", None)
        console.print_text(ctx.get_help() if ctx is not None else "")
        return 0
    format_message = getattr(exc, "format_message", None)
    exit_code = getattr(exc, "exit_code", None)
    if callable(format_message) and isinstance(exit_code, int):
        console.error_line(_one_line(str(format_message())))
        return exit_code
    if state.verbose:
        console.err.print_exception()
    console.error_line(
        f"internal error: {type(exc).__name__}: {exc} (run again with -v for the traceback, "
        "and please report it)"
    )
    return 70


def _one_line(text: str) -> str:
    return " ".join(text.split())


def run() -> None:
    sys.exit(main())
