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
