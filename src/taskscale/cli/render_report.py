"""Terminal rendering of a load-test report, shared by ``loadtest`` and ``report``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from taskscale import console

if TYPE_CHECKING:
    from taskscale.report.model import Report


def render_report(report: Report, run_dir: Path, *, json_output: bool) -> None:
    from taskscale.report.tables import all_tables, drill_line, headline, rpo_line

    if json_output:
        console.print_json(report.to_json_dict())
        return
    console.info(headline(report))
    for line in (drill_line(report), rpo_line(report)):
        if line:
            console.info(line)
    for data in all_tables(report):
        console.table(data.title, data.columns, data.rows)
    # A saturated generator makes the numbers a lower bound: that is a warning. Everything else
    # (where Locust ran, missing worker dumps, an unreached rate) is information for the reader.
    generator = report.generator
    if generator is not None and generator.note:
        if generator.saturated:
            console.warn(f"GENERATOR SATURATED: {generator.note}")
        else:
            console.note(generator.note)
    for item in report.notes:
        console.note(item)
    console.info(f"Reports: {run_dir}/report.html (also report.md, report.json, junit.xml)")
