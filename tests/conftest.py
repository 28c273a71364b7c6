"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from taskscale.cli import main


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


CliRunner = Callable[..., CliResult]


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> CliRunner:
    """Run ``taskscale ARGS...`` in-process through the real entry point (its error handler too)."""

    def invoke(*args: str) -> CliResult:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke


def one_error_line(stderr: str, *, detail: bool = False) -> str:
    """The error line of a failed command: ``error: ...``, no traceback anywhere, and nothing
    else on stderr unless ``detail`` (a dimmed log tail may follow the line)."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    if not detail:
        assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


def dead_pid() -> int:
    """A pid no process has right now."""
    import psutil

    pid = 4_000_000
    while psutil.pid_exists(pid):
        pid -= 1
    return pid
