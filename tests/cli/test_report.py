"""`taskscale report` error paths (re-rendering itself is covered in unit and integration tests)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import CliRunner, one_error_line


def test_report_on_missing_dir(run_cli: CliRunner, tmp_path: Path) -> None:
    result = run_cli("report", str(tmp_path / "nope"))
    assert result.exit_code == 2
    assert "not a load-test run" in one_error_line(result.stderr)
    result = run_cli("report", str(tmp_path))
    assert result.exit_code == 2
    assert "has no report.json" in one_error_line(result.stderr)


def test_report_on_a_foreign_json(run_cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text(json.dumps({"hello": "world"}))
    result = run_cli("report", str(tmp_path))
    assert result.exit_code == 2
    assert "not a taskscale report" in one_error_line(result.stderr)
