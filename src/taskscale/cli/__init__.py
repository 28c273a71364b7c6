"""The ``taskscale`` command: Typer wiring and the one error handler.

Each command lives in its own module as ``command(...)``: it parses options, calls one library
function and renders the result. Nothing here holds logic.
"""

from __future__ import annotations

import atexit
import gc
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import typer

from taskscale import __version__, console
from taskscale.cli import (
    down,
    drill,
    loadtest,
    logs,
    manifests,
    new,
    replicate,
    report,
    status,
    up,
    update,
)
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
app.command("drill")(drill.command)
app.command("report")(report.command)
app.command("up")(up.command)
app.command("status")(status.command)
app.command("logs")(logs.command)
app.command("down")(down.command)
app.add_typer(replicate.app, name="replicate")
app.command("update")(update.command)
app.command("manifests")(manifests.command)


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


class Interrupted(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM arrived: unwinds like KeyboardInterrupt, so every ``finally``
    and ``except BaseException`` cleanup runs, and ``main`` exits 128 + the signal number.

    A BaseException, not a KeyboardInterrupt: Typer turns a KeyboardInterrupt into a silent
    exit, and no library code may swallow it with ``except Exception``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def message(self) -> str:
        return "interrupted" if self.signum == signal.SIGINT else "terminated (SIGTERM)"


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``Interrupted`` once; a second signal while the first one's
    cleanup runs is ignored (cleanup is bounded by its own timeouts). Handlers are restored
    afterwards, so calling ``main`` in-process (tests) leaves the caller's handlers alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        if raised:
            return
        raised.append(signum)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; turn every TaskscaleError into one red line and its exit code."""
    try:
        with _signals_interrupt():
            code = app(args=argv, prog_name="taskscale", standalone_mode=False)
    except TaskscaleError as exc:
        if state.verbose:
            console.err.print_exception()
        console.error_line(exc.message, hint=exc.hint, detail=exc.detail)
        return exc.exit_code
    except Interrupted as exc:
        console.error_line(exc.message)
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        console.error_line("interrupted")
        return 130
    except Exception as exc:  # click usage errors and anything unexpected
        return _handle_other(exc)
    # Typer returns (rather than raises) the exit code of a command that raised typer.Exit,
    # e.g. 130 for a KeyboardInterrupt it caught itself.
    if isinstance(code, int) and code != 0:
        if code == 130:
            console.error_line("interrupted")
        return code
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
