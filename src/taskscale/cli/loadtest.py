"""``taskscale loadtest``: run Locust against the stack, write reports, gate on SLOs.

The load options are declared once here (``Users``, ``Duration``, ...) and shared with
``taskscale drill``, which runs the same load with faults; ``load_spec`` applies the project's
defaults and validates them for both, and ``raise_failed_gates`` gives both the same exit.
"""

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
    from taskscale.loadtest.spec import LoadTestSpec
    from taskscale.report.model import Report

Users = Annotated[
    int | None, typer.Option("--users", "-u", help="Concurrent users (default: taskscale.toml).")
]
SpawnRate = Annotated[
    float | None, typer.Option("--spawn-rate", "-r", help="Users started per second.")
]
Duration = Annotated[
    str | None, typer.Option("--duration", "-d", help="Run time: 30s, 2m, 1m30s, 1h.")
]
Rate = Annotated[
    float | None,
    typer.Option("--rate", help="Open model: target total arrival rate in requests/s."),
]
Scenario = Annotated[
    str | None,
    typer.Option(
        "--scenario", "-s", help="The load's mix: read-heavy, write-heavy, mixed or PATH.py."
    ),
]
Processes = Annotated[
    int | None,
    typer.Option(
        "--processes",
        help="Locust processes (default: one per CPU core); minikube/kubernetes: worker "
        "pods (default 2).",
    ),
]
Out = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Run directory (default .taskscale/runs/<UTC time>)."),
]
Baseline = Annotated[
    Path | None, typer.Option("--baseline", help="A previous report.json to compare with.")
]
Threshold = Annotated[
    float, typer.Option("--threshold", help="Noise threshold (percent) for regressions.")
]
IncludeSetup = Annotated[
    bool,
    typer.Option(
        "--include-setup",
        help="Count setup requests (named '... (setup)': registration, login, test data) "
        "in the totals and SLO gates.",
    ),
]
Telemetry = Annotated[
    bool,
    typer.Option(
        "--telemetry/--no-telemetry",
        help="Sample the servers once a second (requests per replica, replication lag, "
        "cache, pools, backlog, CPU) into the report.",
    ),
]


def load_spec(
    project: Project | None,
    *,
    users: int | None,
    spawn_rate: float | None,
    duration: str | None,
    scenario: str | None,
    processes: int | None,
    slos: list[str] | None,
    rate: float | None,
    out: Path | None,
    baseline: Path | None,
    threshold: float,
    include_setup: bool,
    telemetry: bool,
    target: str,
    context: str | None,
    host: str | None = None,
    sweep: str | None = None,
    drill: bool = False,
) -> LoadTestSpec:
    """The load to run: options over the project's ``[loadtest]`` defaults, validated."""
    from taskscale.config import LoadtestSection
    from taskscale.loadtest.spec import LoadTestSpec

    defaults = project.config.loadtest if project is not None else LoadtestSection()
    return LoadTestSpec.build(
        users=users if users is not None else defaults.users,
        spawn_rate=spawn_rate if spawn_rate is not None else defaults.spawn_rate,
        duration=duration if duration is not None else defaults.duration,
        scenario=scenario if scenario is not None else defaults.scenario,
        processes=processes,
        slos=slos,
        rate=rate,
        host=host,
        out=out,
        baseline=baseline,
        threshold_pct=threshold,
        sweep=sweep,
        target=target,
        context=context,
        include_setup=include_setup,
        drill=drill,
        telemetry=telemetry,
    )


def raise_failed_gates(report: Report) -> None:
    """Exit 1 naming every failed SLO gate (after every report form was written)."""
    failed = report.failed_slos
    if failed:
        raise SloFailed(
            f"{len(failed)} SLO gate(s) failed: "
            + ", ".join(
                f"{r.expr} (measured {'-' if r.value is None else f'{r.value:g} {r.unit}'})"
                for r in failed
            )
        )


def command(
    users: Users = None,
    spawn_rate: SpawnRate = None,
    duration: Duration = None,
    rate: Rate = None,
    scenario: Scenario = None,
    host: Annotated[
        str | None,
        typer.Option("--host", help="Base URL to load (default: the running stack's API)."),
    ] = None,
    processes: Processes = None,
    out: Out = None,
    slo: Annotated[
        list[str] | None,
        typer.Option("--slo", help="Gate, repeatable: p95<200ms, errors<1%, rps>500."),
    ] = None,
    baseline: Baseline = None,
    threshold: Threshold = 5.0,
    sweep_replicas: Annotated[
        str | None,
        typer.Option("--sweep-replicas", help="Run once per replica count, e.g. 1,2,3."),
    ] = None,
    include_setup: IncludeSetup = False,
    telemetry: Telemetry = True,
    project_dir: ProjectDir = None,
    target: TargetName = None,
    context: KubeContext = None,
    json_output: JsonFlag = False,
) -> None:
    """Load-test the stack with Locust; exact HDR percentiles, SLO gates, reports."""
    # Imported here: the load-test stack (httpx, plotly, hdrh) would slow every other command.
    from taskscale.loadtest.service import run_loadtest
    from taskscale.targets import active_target

    project = _optional_project(project_dir, required=host is None)
    if target is None:  # the target of the last `up`, unless loading an explicit URL
        target = active_target(project) if project is not None and host is None else "local"
    spec = load_spec(
        project,
        users=users,
        spawn_rate=spawn_rate,
        duration=duration,
        scenario=scenario,
        processes=processes,
        slos=slo,
        rate=rate,
        out=out,
        baseline=baseline,
        threshold=threshold,
        include_setup=include_setup,
        telemetry=telemetry,
        target=target,
        context=context,
        host=host,
        sweep=sweep_replicas,
    )
    with console.progress("checking the host") as step:
        outcome = run_loadtest(spec, project, on_progress=lambda p: step(p.line()), on_step=step)
    render_report(outcome.report, outcome.run_dir, json_output=json_output)
    raise_failed_gates(outcome.report)


def _optional_project(path: Path | None, *, required: bool) -> Project | None:
    from taskscale.config import load_project

    if required or path is not None:
        return load_project(path)
    try:
        return load_project(None)
    except ProjectNotFound:
        return None
