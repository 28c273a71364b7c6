"""Read and write a run directory's reports."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from taskscale.errors import UsageError
from taskscale.report import html, junit, markdown
from taskscale.report.model import SCHEMA_VERSION, Report

REPORT_FILE = "report.json"
MARKDOWN_FILE = "report.md"
HTML_FILE = "report.html"
JUNIT_FILE = "junit.xml"
HISTOGRAMS_FILE = "histograms.json"


def read_report(path: Path) -> Report:
    """A ``report.json`` (or the run directory holding one), validated; one-line errors."""
    file = path / REPORT_FILE if path.is_dir() else path
    if not file.is_file():
        where = f"{path} has no {REPORT_FILE}" if path.is_dir() else f"{path} does not exist"
        raise UsageError(f"not a load-test run: {where}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {file}: {exc}") from exc
    if not isinstance(data, dict) or "schema_version" not in data:
        raise UsageError(f"{file} is not a taskscale report (no schema_version)")
    if data["schema_version"] != SCHEMA_VERSION:
        raise UsageError(
            f"{file} has report schema {data['schema_version']!r}; this taskscale reads "
            f"schema {SCHEMA_VERSION}"
        )
    try:
        return Report.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise UsageError(f"{file} is not a valid report: {where}: {first['msg']}") from exc


def write_all(report: Report, run_dir: Path) -> list[Path]:
    """report.json, report.md, report.html and junit.xml in ``run_dir``; returns their paths."""
    run_dir.mkdir(parents=True, exist_ok=True)
    files = {
        REPORT_FILE: json.dumps(report.to_json_dict(), indent=2) + "\n",
        MARKDOWN_FILE: markdown.render(report),
        HTML_FILE: html.render(report),
        JUNIT_FILE: junit.render(report),
    }
    written = []
    for name, text in files.items():
        path = run_dir / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written
