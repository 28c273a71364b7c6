"""``taskscale drill``: a load test with faults injected on a schedule; RTO per fault, RPO.

The load options are ``loadtest``'s (declared once in ``cli.loadtest``); a drill adds which
faults (a named drill as the argument, ``--fault``, ``--faults FILE``), ``--failover`` and
``--slow``. ``--scenario`` keeps meaning the load's mix, as in ``loadtest``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from taskscale import console
from taskscale.cli.common import JsonFlag, KubeContext, ProjectDir, TargetName
from taskscale.cli.loadtest import (
    Baseline,
    Duration,
    IncludeSetup,
    Out,
    Processes,
    Rate,
    Scenario,
    SpawnRate,
    Telemetry,
    Threshold,
    Users,
    load_spec,
    raise_failed_gates,
)
from taskscale.cli.render_report import render_report

DRILLS = "replica-crash, primary-failover, cache-outage, broker-outage, standby-hang"


def command(
    drill: Annotated[
        str | None,
        typer.Argument(help=f"A named drill: {DRILLS}.", show_default=False),
    ] = None,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            "--fault",
            help="KIND:SERVICE@T[+DURATION], repeatable: kill:app-2@10s, stop:redis@15s+5s. "
            "Services: app-N, postgres[-N], redis, worker, nginx, kafka, or primary, standby, "
            "cache, broker.",
        ),
    ] = None,
    faults_file: Annotated[
        Path | None,
        typer.Option(
            "--faults", help="A TOML file of [[fault]] tables (kind, service, at, duration)."
        ),
    ] = None,
    failover: Annotated[
        str | None,
        typer.Option(
            "--failover",
            help="When a fault kills the primary: auto (promote a standby, the default when "
            "one exists), manual (you run `taskscale replicate failover`), none.",
            show_default=False,
        ),
    ] = None,
    slow: Annotated[
        str | None,
        typer.Option("--slow", help="A request slower than this counts as failed (default 1s)."),
    ] = None,
    users: Users = None,
    spawn_rate: SpawnRate = None,
    duration: Duration = None,
    rate: Rate = None,
    scenario: Scenario = None,
    processes: Processes = None,
    out: Out = None,
    slo: Annotated[
        list[str] | None,
        typer.Option(
            "--slo", help="Gate, repeatable: rto<5s, rpo=0, p95<200ms, errors<1%, rps>500."
        ),
    ] = None,
    baseline: Baseline = None,
    threshold: Threshold = 5.0,
    include_setup: IncludeSetup = False,
    telemetry: Telemetry = True,
    project_dir: ProjectDir = None,
    target: TargetName = None,
    context: KubeContext = None,
    json_output: JsonFlag = False,
) -> None:
    """Load the stack and inject faults on a schedule; measured RTO and RPO, SLO gates."""
    from taskscale.config import load_project
    from taskscale.drill.service import DrillSpec, run_drill
    from taskscale.targets import active_target

    project = load_project(project_dir)
    load = load_spec(
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
        target=target or active_target(project),
        context=context,
        drill=True,
    )
    spec = DrillSpec.build(
        load, name=drill, faults=fault or [], faults_file=faults_file, failover=failover, slow=slow
    )
    with console.progress("checking the stack") as step:
        outcome = run_drill(
            spec,
            project,
            on_progress=lambda p: step(p.line()),
            on_step=step,
            on_note=console.note,
        )
    render_report(outcome.report, outcome.run_dir, json_output=json_output)
    raise_failed_gates(outcome.report)
