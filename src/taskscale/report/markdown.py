"""report.md: GitHub-flavoured Markdown, fit for a CI step summary ($GITHUB_STEP_SUMMARY)."""

from __future__ import annotations

from taskscale.report.model import Report
from taskscale.report.tables import (
    TableData,
    all_tables,
    drill_line,
    environment_rows,
    headline,
    regression_lines,
    rpo_line,
    warnings,
)


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", " ")


def table(data: TableData) -> str:
    lines = [
        "| " + " | ".join(_escape(c) for c in data.columns) + " |",
        "|" + "|".join(" --- " for _ in data.columns) + "|",
    ]
    lines += ["| " + " | ".join(_escape(c) for c in row) + " |" for row in data.rows]
    return "\n".join(lines)


def render(report: Report) -> str:
    failed = report.failed_slos
    status = "FAILED" if failed else "passed"
    title = "Scaling sweep" if report.kind == "sweep" else "Load test"
    if report.drill is not None:
        title = "Drill" + (f" {report.drill.name}" if report.drill.name else "")
    parts = [f"# taskscale {title}: {status}", "", headline(report), ""]
    for line in (drill_line(report), rpo_line(report)):
        if line:
            parts += [f"**{_escape(line)}**", ""]
    for warning in warnings(report):
        parts += [f"> **Warning:** {_escape(warning)}", ""]
    if failed:
        parts += ["**Failed SLO gates:** " + ", ".join(f"`{r.expr}`" for r in failed), ""]
    if report.baseline is not None and report.baseline.regressions:
        listed = ", ".join(regression_lines(report))
        parts += [
            f"**{len(report.baseline.regressions)} regression(s)** beyond "
            f"{report.baseline.threshold_pct:g}% vs the baseline: {listed}",
            "",
        ]
    for data in all_tables(report):
        parts += [f"## {data.title}", "", table(data), ""]
    parts += [
        "## Environment",
        "",
        table(TableData("environment", ["key", "value"], environment_rows(report))),
        "",
    ]
    return "\n".join(parts)
