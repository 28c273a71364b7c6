"""`taskscale drill` bad input: one line, exit 2 (or the stack's error) before any load, and no
run directory written. Checks that need a running stack (unknown services, overlapping faults
on one service, a primary fault without a standby) are in tests/integration/test_drill.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import write_minimal_project
from tests.conftest import CliRunner, one_error_line


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--fault", "explode:app-1@2s"], "explode"),
        (["--fault", "kill:app-1"], "kill:app-1"),
        (["--fault", "kill:app-1@30s", "--duration", "10s"], "30s"),
        (["no-such-drill"], "no-such-drill"),
        (["--fault", "kill:app-1@2s", "--failover", "sometimes"], "sometimes"),
        (["--fault", "kill:app-1@2s", "--slo", "rpo<1s"], "rpo<1s"),
        (["--fault", "kill:app-1@2s", "--slow", "-1s"], "-1s"),
        (["--fault", "kill:app-1@2s", "--users", "1"], "--users"),
        (["--fault", "kill:app-1@2s", "--host", "http://127.0.0.1:9"], "--host"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    run_cli: CliRunner, tmp_path: Path, args: list[str], needle: str
) -> None:
    project = write_minimal_project(tmp_path / "p")
    out = tmp_path / "run"
    result = run_cli("drill", *args, "--project", str(project), "--out", str(out))
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert needle in one_error_line(result.stderr)
    assert not out.exists()


def test_no_fault_at_all_is_refused(run_cli: CliRunner, tmp_path: Path) -> None:
    project = write_minimal_project(tmp_path / "p")
    result = run_cli("drill", "--project", str(project))
    assert result.exit_code == 2
    one_error_line(result.stderr)


def test_a_faults_file_with_an_error_names_the_file(run_cli: CliRunner, tmp_path: Path) -> None:
    project = write_minimal_project(tmp_path / "p")
    faults = tmp_path / "faults.toml"
    faults.write_text('[[fault]]\nkind = "kill"\nservice = "app-1"\nat = "nope"\n')
    result = run_cli("drill", "--faults", str(faults), "--project", str(project))
    assert result.exit_code == 2
    assert "faults.toml" in one_error_line(result.stderr)
    faults.write_text("[[fault]\n")
    result = run_cli("drill", "--faults", str(faults), "--project", str(project))
    assert result.exit_code == 2
    assert "faults.toml" in one_error_line(result.stderr)


def test_a_stack_that_is_not_running_is_one_line(run_cli: CliRunner, tmp_path: Path) -> None:
    project = write_minimal_project(tmp_path / "p")
    out = tmp_path / "run"
    result = run_cli(
        "drill", "--fault", "kill:app-1@2s", "--project", str(project), "--out", str(out)
    )
    assert result.exit_code != 0
    one_error_line(result.stderr, detail=True)
    assert not out.exists()
