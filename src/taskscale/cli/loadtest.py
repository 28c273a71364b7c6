"""``taskscale loadtest``: run Locust against the stack, write reports, gate on SLOs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from taskscale import console
from taskscale.cli.common import JsonFlag, KubeContext, ProjectDir, TargetName
from taskscale.cli.render_report import render_report
from taskscale.errors import ProjectNotFound, SloFailed

if TYPE_CHECKING:
    from taskscale.config import Project


def command(
    users: Annotated[
        int | None,
        typer.Option("--users", "-u", help="Concurrent users (default: taskscale.toml)."),
    ] = None,
    spawn_rate: Annotated[
        float | None, typer.Option("--spawn-rate", "-r", help="Users started per second.")
    ] = None,
    duration: Annotated[
        str | None, typer.Option("--duration", "-d", help="Run time: 30s, 2m, 1m30s, 1h.")
    ] = None,
    rate: Annotated[
        float | None,
        typer.Option("--rate", help="Open model: target total arrival rate in requests/s."),
    ] = None,
    scenario: Annotated[
        str | None,
        typer.Option("--scenario", "-s", help="read-heavy, write-heavy, mixed or PATH.py."),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option("--host", help="Base URL to load (default: the running stack's API)."),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            "--processes",
            help="Locust processes (default: one per CPU core); minikube/kubernetes: worker "
            "pods (default 2).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Run directory (default .taskscale/runs/<UTC time>)."),
    ] = None,
    slo: Annotated[
        list[str] | None,
        typer.Option("--slo", help="Gate, repeatable: p95<200ms, errors<1%, rps>500."),
    ] = None,
    baseline: Annotated[
        Path | None, typer.Option("--baseline", help="A previous report.json to compare with.")
    ] = None,
    threshold: Annotated[
        float, typer.Option("--threshold", help="Noise threshold (percent) for regressions.")
    ] = 5.0,
    sweep_replicas: Annotated[
        str | None,
        typer.Option("--sweep-replicas", help="Run once per replica count, e.g. 1,2,3."),
    ] = None,
    include_setup: Annotated[
        bool,
        typer.Option(
            "--include-setup",
            help="Count setup requests (named '... (setup)': registration, login, test data) "
            "in the totals and SLO gates.",
        ),
    ] = False,
    project_dir: ProjectDir = None,
    target: TargetName = None,
    context: KubeContext = None,
    json_output: JsonFlag = False,
) -> None:
    """Load-test the stack with Locust; exact HDR percentiles, SLO gates, reports."""
    # Imported here: the load-test stack (httpx, plotly, hdrh) would slow every other command.
    from taskscale.config import LoadtestSection
    from taskscale.loadtest.service import run_loadtest
    from taskscale.loadtest.spec import LoadTestSpec
    from taskscale.targets import active_target

    project = _optional_project(project_dir, required=host is None)
    if target is None:  # the target of the last `up`, unless loading an explicit URL
        target = active_target(project) if project is not None and host is None else "local"
    defaults = project.config.loadtest if project is not None else LoadtestSection()
    spec = LoadTestSpec.build(
        users=users if users is not None else defaults.users,
        spawn_rate=spawn_rate if spawn_rate is not None else defaults.spawn_rate,
        duration=duration if duration is not None else defaults.duration,
        scenario=scenario if scenario is not None else defaults.scenario,
        processes=processes,
        slos=slo,
        rate=rate,
        host=host,
        out=out,
        baseline=baseline,
        threshold_pct=threshold,
        sweep=sweep_replicas,
        target=target,
        context=context,
        include_setup=include_setup,
    )
    with console.progress("checking the host") as step:
        outcome = run_loadtest(spec, project, on_progress=lambda p: step(p.line()), on_step=step)
    render_report(outcome.report, outcome.run_dir, json_output=json_output)
    failed = outcome.report.failed_slos
    if failed:
        raise SloFailed(
            f"{len(failed)} SLO gate(s) failed: "
            + ", ".join(
                f"{r.expr} (measured {'-' if r.value is None else f'{r.value:g} {r.unit}'})"
                for r in failed
            )
        )


def _optional_project(path: Path | None, *, required: bool) -> Project | None:
    from taskscale.config import load_project

    if required or path is not None:
        return load_project(path)
    try:
        return load_project(None)
    except ProjectNotFound:
        return None
