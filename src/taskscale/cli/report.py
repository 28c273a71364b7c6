"""``taskscale report RUN_DIR``: re-render every report form of a load-test run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from taskscale.cli.common import JsonFlag
from taskscale.cli.render_report import render_report


def command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (holding report.json).")],
    baseline: Annotated[
        Path | None, typer.Option("--baseline", help="A report.json to compare with.")
    ] = None,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Noise threshold (percent) for regressions.")
    ] = 5.0,
    json_output: JsonFlag = False,
) -> None:
    """Re-render report.json/.md/.html and junit.xml of a run (from its stored histograms)."""
    from taskscale.loadtest.service import rerender_run  # heavy: keep other commands fast

    outcome = rerender_run(run_dir, baseline=baseline, threshold_pct=threshold)
    render_report(outcome.report, outcome.run_dir, json_output=json_output)
