"""Terminal rendering of a load-test report, shared by ``loadtest`` and ``report``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from taskscale import console

if TYPE_CHECKING:
    from taskscale.report.model import Report


def render_report(report: Report, run_dir: Path, *, json_output: bool) -> None:
    from taskscale.report.tables import all_tables, headline, warnings

    if json_output:
        console.print_json(report.to_json_dict())
        return
    console.info(headline(report))
    for data in all_tables(report):
        console.table(data.title, data.columns, data.rows)
    for warning in warnings(report):
        console.warn(warning)
    console.info(f"Reports: {run_dir}/report.html (also report.md, report.json, junit.xml)")
