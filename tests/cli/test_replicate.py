"""`taskscale replicate ...` bad input: one line, non-zero exit, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CliRunner, one_error_line


@pytest.fixture
def idle_project(tmp_path: Path, run_cli: CliRunner) -> Path:
    assert run_cli("new", "idle", "-o", str(tmp_path), "--no-git").exit_code == 0
    return tmp_path / "idle"


def test_outside_a_project(run_cli: CliRunner, tmp_path: Path) -> None:
    result = run_cli("replicate", "status", "--project", str(tmp_path))
    assert result.exit_code == 3
    assert "not inside a taskscale project" in one_error_line(result.stderr)


@pytest.mark.parametrize(
    "args",
    [
        ["replicate"],
        ["replicate", "--replicas", "2", "--sync"],
        ["replicate", "status"],
        ["replicate", "switchover", "--to", "postgres-2"],
        ["replicate", "failover"],
        ["replicate", "rejoin", "postgres"],
    ],
)
def test_no_stack_running(run_cli: CliRunner, idle_project: Path, args: list[str]) -> None:
    result = run_cli(*args, "--project", str(idle_project))
    assert result.exit_code == 6
    assert "not running" in one_error_line(result.stderr)
    assert not (idle_project / ".taskscale" / "replication.json").exists()


def test_switchover_needs_a_node(run_cli: CliRunner, idle_project: Path) -> None:
    result = run_cli("replicate", "switchover", "--project", str(idle_project))
    assert result.exit_code == 2
    assert "--to" in one_error_line(result.stderr)


def test_unknown_subcommand(run_cli: CliRunner, idle_project: Path) -> None:
    result = run_cli("replicate", "promote", "--project", str(idle_project))
    assert result.exit_code == 2
