"""`taskscale report` error paths (re-rendering itself is covered in unit and integration tests)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import CliRunner


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_report_on_missing_dir(run_cli: CliRunner, tmp_path: Path) -> None:
    result = run_cli("report", str(tmp_path / "nope"))
    assert result.exit_code == 2
    assert "not a load-test run" in _one_error_line(result.stderr)
    result = run_cli("report", str(tmp_path))
    assert result.exit_code == 2
    assert "has no report.json" in _one_error_line(result.stderr)


def test_report_on_a_foreign_json(run_cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text(json.dumps({"hello": "world"}))
    result = run_cli("report", str(tmp_path))
    assert result.exit_code == 2
    assert "not a taskscale report" in _one_error_line(result.stderr)
