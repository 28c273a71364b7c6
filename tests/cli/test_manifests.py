"""`taskscale manifests` bad input that needs no kubectl: one clear line, a non-zero exit,
nothing printed or written (the rendering itself is in tests/kubernetes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CliRunner, one_error_line


def test_outside_a_project(run_cli: CliRunner, tmp_path: Path) -> None:
    result = run_cli("manifests", "--project", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.exit_code == 3
    assert one_error_line(result.stderr).startswith("error: not inside a taskscale project")
    assert result.stdout == "" and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("target", "guide"), [("compose", "compose.md"), ("local", "local-target.md")]
)
def test_a_target_without_manifests(
    run_cli: CliRunner, generated: Path, tmp_path: Path, target: str, guide: str
) -> None:
    out = tmp_path / "out"
    result = run_cli("manifests", "-t", target, "-p", str(generated), "--out", str(out))
    assert result.exit_code == 6
    assert one_error_line(result.stderr) == (
        f"error: `taskscale manifests` is not supported on the {target} target "
        f"(see docs/{guide} for what the {target} target offers)"
    )
    assert result.stdout == "" and not out.exists()


def test_an_unknown_target_and_bad_replicas(run_cli: CliRunner, generated: Path) -> None:
    result = run_cli("manifests", "-t", "nomad", "-p", str(generated))
    assert result.exit_code == 2 and "unknown target 'nomad'" in one_error_line(result.stderr)
    result = run_cli("manifests", "-p", str(generated), "--replicas", "11")
    assert result.exit_code == 2
    assert "--replicas 11 is above the autoscaler's maximum of 10" in one_error_line(result.stderr)
