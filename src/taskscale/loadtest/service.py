"""``run_loadtest``: preflight, Locust run(s), metrics -> typed report, every report form written.

Also ``rerender_run`` (``taskscale report``): rebuild the reports of a run directory from its
stored histograms. Neither prints nor exits; progress goes to a callback.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from taskscale import __version__, proc
from taskscale.config import Project
from taskscale.errors import TargetError, TaskscaleError, UsageError
from taskscale.loadgen.channel import INCLUDE_SETUP_ENV
from taskscale.loadgen.job import LoadGenerator, LocustJob, LocustRun, ProgressCallback
from taskscale.loadgen.local import run_locust
from taskscale.loadgen.metrics import RunMetrics
from taskscale.loadtest import summary
from taskscale.loadtest.compare import compare
from taskscale.loadtest.slo import Slo, evaluate, parse_slo
from taskscale.loadtest.spec import BUILTIN_SCENARIOS, LoadTestSpec
from taskscale.loadtest.telemetry import TelemetrySampler, sampling
from taskscale.report import HISTOGRAMS_FILE, read_report, write_all
from taskscale.report.model import (
    Environment,
    FaultResult,
    GeneratorLoad,
    Report,
    Rpo,
    SloResult,
    Sweep,
    SweepStep,
)
from taskscale.resources import template_root
from taskscale.targets import get_target
from taskscale.targets.base import Target
from taskscale.targets.model import StepCallback, no_steps

# The generated locustfile picks its scenario from this variable (see templates/project/loadtest).
SCENARIO_ENV = "TASKSCALE_SCENARIO"
LOCUSTFILE = Path("loadtest") / "locustfile.py"
PREFLIGHT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class LoadTestOutcome:
    report: Report
    run_dir: Path
    files: list[Path]


@dataclass(frozen=True)
class RunContext:
    """Everything resolved before load is sent."""

    spec: LoadTestSpec
    host: str
    target_name: str
    replicas: int | None
    locustfile: Path
    scenario_env: dict[str, str]
    app_version: str | None
    baseline: Report | None
    # Set when Locust runs next to the stack (in the cluster) rather than on this machine.
    generator: LoadGenerator | None = None
    # The project's stack (None with --host); a sweep scales it through this same instance.
    target: Target | None = None


# ---------------------------------------------------------------- preflight and resolution


def preflight(host: str, timeout: float = PREFLIGHT_TIMEOUT_S) -> dict[str, object]:
    """GET ``host``/readyz must answer 200; returns its JSON body (or {})."""
    url = f"{host}/readyz"
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise TargetError(
            f"{url} is not reachable ({reason}); no load was sent",
            hint="start the stack with `taskscale up` or pass --host URL",
        ) from exc
    if response.status_code != 200:
        raise TargetError(
            f"{url} answered {response.status_code}, not 200: the stack is not ready; "
            "no load was sent"
        )
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _wait_ready(host: str, timeout: float) -> dict[str, object]:
    last: list[TaskscaleError] = []
    body: list[dict[str, object]] = []

    def check() -> bool:
        try:
            body.append(preflight(host, timeout=2.0))
        except TaskscaleError as exc:
            last.append(exc)
            return False
        return True

    if not proc.poll_until(check, timeout, interval=0.2):
        raise last[-1] if last else TargetError(f"{host}/readyz did not answer 200")
    return body[-1]


def _packaged_locustfile() -> Path:
    try:
        path = template_root() / LOCUSTFILE
    except TaskscaleError:
        path = None
    if path is None or not path.is_file():
        raise UsageError(
            "no locustfile for the built-in scenarios outside a project: pass --scenario PATH.py"
        )
    return path


def _resolve_locustfile(spec: LoadTestSpec, project: Project | None) -> tuple[Path, dict[str, str]]:
    if spec.scenario not in BUILTIN_SCENARIOS:
        return Path(spec.scenario).resolve(), {}
    env = {SCENARIO_ENV: spec.scenario}
    if project is not None and (project.root / LOCUSTFILE).is_file():
        return project.root / LOCUSTFILE, env
    return _packaged_locustfile(), env


def _app_version(project: Project | None, ready_body: dict[str, object]) -> str | None:
    version = ready_body.get("version")
    if isinstance(version, str):
        return version
    if project is None:
        return None
    try:
        data = tomllib.loads((project.root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return None
    value = data.get("project", {}).get("version")
    return str(value) if value is not None else None


def _target(spec: LoadTestSpec, project: Project | None) -> Target:
    if project is None:
        raise UsageError(
            "no taskscale project here: pass --host URL, or run inside a project "
            "(or with --project DIR)"
        )
    return get_target(spec.target, project, context=spec.context)


def default_run_dir(project: Project | None) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = project.state_dir if project is not None else Path.cwd() / ".taskscale"
    run_dir = base / "runs" / stamp
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = base / "runs" / f"{stamp}-{suffix}"
    return run_dir


def prepare(spec: LoadTestSpec, project: Project | None) -> RunContext:
    """Resolve and check everything, cheapest first; the readiness probe is the only request."""
    if spec.sweep is not None and spec.host is not None:
        raise UsageError("--sweep-replicas scales the project's stack; it cannot use --host")
    target = _target(spec, project) if spec.host is None else None
    baseline = read_report(spec.baseline) if spec.baseline is not None else None
    if baseline is not None and baseline.total is None:
        raise UsageError(f"--baseline {spec.baseline} is a sweep report; pass one run's report")
    locustfile, scenario_env = _resolve_locustfile(spec, project)
    if target is None:
        assert spec.host is not None
        body = preflight(spec.host)
        return RunContext(
            spec=spec,
            host=spec.host,
            target_name="external",
            replicas=None,
            locustfile=locustfile,
            scenario_env=scenario_env,
            app_version=_app_version(project, body),
            baseline=baseline,
        )
    status = target.status()
    if not status.running:
        raise TargetError(
            f"the {target.name} stack is not running; no load was sent",
            hint="start it with `taskscale up`, or pass --host URL",
        )
    generator = target.load_generator()
    ready_body: dict[str, object] = {}
    if generator is not None:
        generator.check_ready()
        host = generator.host
    else:
        host = status.endpoints.api.rstrip("/")
        # A sweep checks readiness after each scaling step instead.
        ready_body = preflight(host) if spec.sweep is None else {}
    return RunContext(
        spec=spec,
        host=host,
        target_name=target.name,
        replicas=status.replicas,
        locustfile=locustfile,
        scenario_env=scenario_env,
        app_version=_app_version(project, ready_body),
        baseline=baseline,
        generator=generator,
        target=target,
    )


# ---------------------------------------------------------------- one run


def _environment(
    ctx: RunContext, replicas: int | None, started: datetime, finished: datetime
) -> Environment:
    spec = ctx.spec
    return Environment(
        taskscale_version=__version__,
        app_version=ctx.app_version,
        target=ctx.target_name,
        replicas=replicas,
        cpu_count=os.cpu_count() or 1,
        host=ctx.host,
        scenario=spec.scenario,
        locustfile=str(ctx.locustfile),
        users=spec.users,
        spawn_rate=spec.spawn_rate,
        duration_s=spec.duration_s,
        rate=spec.rate,
        processes=spec.processes,
        locust_version=importlib.metadata.version("locust"),
        python_version=platform.python_version(),
        platform=platform.platform(),
        started_at=started.isoformat(timespec="seconds"),
        finished_at=finished.isoformat(timespec="seconds"),
    )


def _rate_note(spec_rate: float | None, rps: float) -> list[str]:
    if spec_rate and rps < 0.95 * spec_rate:
        return [
            f"the target arrival rate {spec_rate:g} req/s was not reached ({rps:.1f} req/s): "
            "too few users for the response times (each user waits for its response), or the "
            "generator or the system was saturated; latencies include the coordinated-omission "
            "correction for the missed sends"
        ]
    return []


def build_report(
    metrics: RunMetrics,
    slos: list[Slo],
    environment: Environment,
    *,
    generator: GeneratorLoad | None = None,
    baseline: Report | None = None,
    baseline_path: str = "",
    threshold_pct: float = 5.0,
    notes: list[str] | None = None,
    faults: list[FaultResult] | None = None,
    rpo: Rpo | None = None,
) -> Report:
    """The typed report of one run (pure: no I/O); a drill's ``faults`` and ``rpo`` too."""
    total = summary.totals(metrics)
    endpoints = summary.endpoints(metrics)
    results = evaluate(slos, total, {e.label: e for e in endpoints}, faults=faults, rpo=rpo)
    report = Report(
        total=total,
        endpoints=endpoints,
        timeline=summary.timeline(metrics),
        slo=results,
        environment=environment,
        generator=generator,
        notes=[
            *(notes or []),
            *summary.excluded_note(endpoints),
            *_rate_note(environment.rate, total.rps),
        ],
        faults=faults or [],
        rpo=rpo,
    )
    if baseline is not None:
        report.baseline = compare(report, baseline, path=baseline_path, threshold_pct=threshold_pct)
    return report


def locust_job(
    ctx: RunContext,
    run_dir: Path,
    *,
    label: str = "",
    env: dict[str, str] | None = None,
    extra_scripts: tuple[str, ...] = (),
) -> LocustJob:
    """The Locust run ``ctx`` asks for, writing into ``run_dir``."""
    spec = ctx.spec
    return LocustJob(
        locustfile=ctx.locustfile,
        host=ctx.host,
        users=spec.users,
        spawn_rate=spec.spawn_rate,
        duration_s=spec.duration_s,
        processes=spec.processes,
        run_dir=run_dir,
        rate=spec.rate,
        stop_timeout_s=spec.stop_timeout_s,
        env={
            **ctx.scenario_env,
            **({INCLUDE_SETUP_ENV: "1"} if spec.include_setup else {}),
            **(env or {}),
        },
        label=label,
        extra_scripts=extra_scripts,
    )


def execute(ctx: RunContext, job: LocustJob, on_progress: ProgressCallback | None) -> LocustRun:
    """Run ``job`` where the target runs Locust (in the cluster, or on this machine)."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    run = (
        ctx.generator.run(job, on_progress)
        if ctx.generator is not None
        else run_locust(job, on_progress)
    )
    run.metrics.save(job.run_dir / HISTOGRAMS_FILE)
    return run


def origin_of(metrics: RunMetrics) -> float | None:
    """Epoch seconds of the timeline's t=0 (the first second a request completed in)."""
    return float(min(metrics.seconds)) if metrics.seconds else None


def report_of(
    ctx: RunContext,
    run: LocustRun,
    replicas: int | None,
    sampler: TelemetrySampler | None,
    **extra: Any,
) -> Report:
    """The typed report of one run, with its telemetry on the run's timeline; ``extra`` are
    ``build_report``'s drill arguments."""
    spec = ctx.spec
    report = build_report(
        run.metrics,
        spec.slos,
        _environment(ctx, replicas, run.started_at, run.finished_at),
        generator=run.generator,
        baseline=ctx.baseline,
        baseline_path=str(spec.baseline) if spec.baseline else "",
        threshold_pct=spec.threshold_pct,
        notes=run.notes,
        **extra,
    )
    report.origin_epoch = origin_of(run.metrics)
    if sampler is not None:
        report.telemetry = sampler.telemetry(report.origin_epoch or run.started_at.timestamp())
    elif spec.telemetry and ctx.target is not None:
        report.notes.append(f"the {ctx.target_name} target offers no server-side telemetry")
    return report


def _run_once(
    ctx: RunContext,
    run_dir: Path,
    replicas: int | None,
    on_progress: ProgressCallback | None,
    label: str = "",
) -> tuple[Report, list[Path]]:
    job = locust_job(ctx, run_dir, label=label)
    with sampling(ctx.target if ctx.spec.telemetry else None) as sampler:
        run = execute(ctx, job, on_progress)
    report = report_of(ctx, run, replicas, sampler)
    return report, write_all(report, run_dir)


# ---------------------------------------------------------------- sweep


def sweep_summary(replicas: list[int], reports: list[tuple[Report, str]]) -> Sweep:
    steps = []
    unit: float | None = None
    for n, (report, run_dir) in zip(replicas, reports, strict=True):
        total = report.total
        assert total is not None
        if unit is None and total.rps > 0:
            unit = total.rps / n
        steps.append(
            SweepStep(
                replicas=n,
                requests=total.requests,
                failures=total.failures,
                error_rate=total.error_rate,
                rps=total.rps,
                p50=total.latency_ms.p50,
                p95=total.latency_ms.p95,
                p99=total.latency_ms.p99,
                efficiency=round(total.rps / (n * unit), 3) if unit else None,
                generator_saturated=bool(report.generator and report.generator.saturated),
                run_dir=run_dir,
                slo_passed=not report.failed_slos,
            )
        )
    note = None
    if any(step.generator_saturated for step in steps):
        note = (
            "the load generator was saturated in at least one step: throughput there is a "
            "lower bound and efficiency understates scaling"
        )
    return Sweep(replicas=replicas, steps=steps, note=note)


def _sweep_report(ctx: RunContext, steps: list[tuple[Report, str]], replicas: list[int]) -> Report:
    first, last = steps[0][0], steps[-1][0]
    environment = first.environment.model_copy(
        update={"replicas": None, "finished_at": last.environment.finished_at}
    )
    slo: list[SloResult] = []
    for n, (report, _) in zip(replicas, steps, strict=True):
        slo += [
            result.model_copy(update={"expr": f"replicas={n}: {result.expr}"})
            for result in report.slo
        ]
    sweep = sweep_summary(replicas, steps)
    notes = [sweep.note] if sweep.note else []
    for n, (report, _) in zip(replicas, steps, strict=True):
        notes += [f"replicas={n}: {note}" for note in report.notes]
        if report.generator is not None and report.generator.note:
            notes.append(f"replicas={n}: {report.generator.note}")
    return Report(
        kind="sweep", total=None, slo=slo, environment=environment, sweep=sweep, notes=notes
    )


def _run_sweep(
    ctx: RunContext,
    project: Project | None,
    run_dir: Path,
    on_progress: ProgressCallback | None,
    on_step: StepCallback,
) -> tuple[Report, list[Path]]:
    replicas = ctx.spec.sweep or []
    target = ctx.target
    assert target is not None, "_prepare rejects a sweep with --host"
    original = ctx.replicas
    ready_timeout = project.config.stack.ready_timeout if project is not None else 30.0
    steps: list[tuple[Report, str]] = []
    current = original
    try:
        for n in replicas:
            on_step(f"scaling to {n} replica(s)")
            current = n
            status = target.scale(n, on_step)
            host = ctx.host
            if ctx.generator is None:
                host = status.endpoints.api.rstrip("/")
                _wait_ready(host, ready_timeout)
            step_ctx = dataclasses.replace(ctx, host=host, replicas=status.replicas)
            step_dir = run_dir / f"replicas-{n}"
            report, _ = _run_once(step_ctx, step_dir, n, on_progress, label=f"[{n} replicas]")
            steps.append((report, step_dir.name))
    finally:
        # Leave the stack as we found it, also after a failed or interrupted step.
        if original is not None and current != original:
            on_step(f"scaling back to {original} replica(s)")
            target.scale(original, on_step)
    report = _sweep_report(ctx, steps, replicas)
    return report, write_all(report, run_dir)


# ---------------------------------------------------------------- entry points


def run_loadtest(
    spec: LoadTestSpec,
    project: Project | None,
    *,
    on_progress: ProgressCallback | None = None,
    on_step: StepCallback = no_steps,
) -> LoadTestOutcome:
    """Preflight, run (or sweep), write every report form; SLO failures are in the report."""
    ctx = prepare(spec, project)
    run_dir = (spec.out or default_run_dir(project)).resolve()
    if spec.sweep is not None:
        report, files = _run_sweep(ctx, project, run_dir, on_progress, on_step)
    else:
        report, files = _run_once(ctx, run_dir, ctx.replicas, on_progress)
    return LoadTestOutcome(report=report, run_dir=run_dir, files=files)


def rerender_run(
    run_dir: Path, *, baseline: Path | None = None, threshold_pct: float = 5.0
) -> LoadTestOutcome:
    """Rebuild every report form of ``run_dir`` from report.json and its stored histograms."""
    if not run_dir.is_dir():
        raise UsageError(f"not a load-test run: {run_dir} is not a directory")
    stored = read_report(run_dir)
    base = read_report(baseline) if baseline is not None else None
    if base is not None and base.total is None:
        raise UsageError(f"--baseline {baseline} is a sweep report; pass one run's report")
    if stored.kind == "sweep":
        if stored.sweep is None:
            raise UsageError(f"{run_dir}/report.json: a sweep report without its steps")
        steps = []
        for step in stored.sweep.steps:
            step_report = rerender_run(run_dir / step.run_dir).report
            steps.append((step_report, step.run_dir))
        report = stored.model_copy(update={"sweep": sweep_summary(stored.sweep.replicas, steps)})
    else:
        report = _rerender_single(run_dir, stored, base, baseline, threshold_pct)
    return LoadTestOutcome(report=report, run_dir=run_dir, files=write_all(report, run_dir))


def _rerender_single(
    run_dir: Path,
    stored: Report,
    base: Report | None,
    baseline: Path | None,
    threshold_pct: float,
) -> Report:
    histograms = run_dir / HISTOGRAMS_FILE
    slos = []
    for result in stored.slo:
        try:
            slos.append(parse_slo(result.expr))
        except UsageError:
            continue
    if histograms.is_file():
        try:
            metrics = RunMetrics.load(histograms)
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(f"cannot read {histograms}: {exc}") from exc
        report = build_report(
            metrics,
            slos,
            stored.environment,
            generator=stored.generator,
            baseline=base,
            baseline_path=str(baseline) if baseline else "",
            threshold_pct=threshold_pct,
            faults=stored.faults,
            rpo=stored.rpo,
        )
        report.notes = stored.notes
        # What the run measured beyond Locust's histograms is kept as it was.
        report.origin_epoch = stored.origin_epoch
        report.telemetry = stored.telemetry
        report.drill = stored.drill
        if base is None:
            report.baseline = stored.baseline
        return report
    # No histograms (e.g. only report.json was kept): re-render what the JSON holds.
    report = stored.model_copy()
    if base is not None:
        report.baseline = compare(report, base, path=str(baseline), threshold_pct=threshold_pct)
    elif baseline is None:
        report.baseline = stored.baseline
    return report
