"""``run_drill``: a load test (the same engine, options, reports and exit codes as
``loadtest``) with faults injected on a schedule, measured RTO per fault and RPO afterwards.

Order of work, so that bad input never costs a load: the schedule's syntax and times
(``DrillSpec.build``), then the stack (``loadtest.service.prepare``: running and ready), the
services and whether the target can do each fault (``Target.faults``), the failover mode;
only then Locust starts, with the drill's writers among its users and the plugin counting
requests in 100 ms buckets. The fault thread (``runner``) injects while Locust runs. When the
load ends (or fails, or Ctrl-C arrives) every frozen service is resumed and every killed one
is waited for (the target's restart policy) or started again; then the writers' acknowledged
writes are read back from the primary, each fault is measured (``measure``) and every report
form is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from taskscale.config import Project
from taskscale.drill import measure, rpo
from taskscale.drill.runner import FaultRunner
from taskscale.drill.schedule import (
    FailoverMode,
    FaultSpec,
    PlannedFault,
    failover_mode,
    gather,
    plan,
)
from taskscale.errors import TaskscaleError, UsageError
from taskscale.loadgen.channel import (
    DRILL_BUCKET_ENV,
    DRILL_SLOW_ENV,
    DRILL_TIMEOUT_ENV,
    DRILL_WRITER_RATE_ENV,
    DRILL_WRITERS_ENV,
)
from taskscale.loadgen.job import Progress, ProgressCallback
from taskscale.loadtest.service import (
    LoadTestOutcome,
    RunContext,
    default_run_dir,
    execute,
    locust_job,
    origin_of,
    prepare,
    report_of,
)
from taskscale.loadtest.spec import LoadTestSpec, seconds_of
from taskscale.loadtest.telemetry import sampling
from taskscale.report import write_all
from taskscale.report.model import DrillInfo, FaultResult, Report
from taskscale.targets.capabilities import FaultInjector, Promotion, Unsupported, require
from taskscale.targets.model import StepCallback, no_steps

BUCKET_MS = 100
SUSTAIN_S = 2.0
WRITER_RATE = 10.0  # write cycles per second per writer (4 requests each)
WRITER_TIMEOUT_S = 5.0
WRITER_SCRIPT = "drill_writer.py"

Notify = Callable[[str], None]


@dataclass(frozen=True)
class DrillSpec:
    """A validated drill request (syntax and times; the stack is checked in ``run_drill``)."""

    load: LoadTestSpec
    faults: list[FaultSpec]
    name: str | None = None
    failover: str | None = None  # as asked; resolved against the stack
    slow_ms: float = 1000.0
    sustain_s: float = SUSTAIN_S
    writers: int = 1
    writer_rate: float = WRITER_RATE

    @classmethod
    def build(
        cls,
        load: LoadTestSpec,
        *,
        name: str | None,
        faults: list[str],
        faults_file: Path | None,
        failover: str | None,
        slow: str | None,
    ) -> DrillSpec:
        if load.host is not None:
            raise UsageError(
                "a drill injects faults into the project's stack; it cannot use --host"
            )
        if load.sweep is not None:
            raise UsageError("a drill runs one load; --sweep-replicas is for `taskscale loadtest`")
        if load.users < 2:
            raise UsageError(
                f"invalid --users {load.users}: a drill needs at least 2 (one is its writer)"
            )
        slow_ms = 1000.0
        if slow is not None:
            seconds = seconds_of(slow)
            if seconds is None or seconds <= 0:
                raise UsageError(f"invalid --slow {slow!r}: use a time such as 500ms or 1s")
            slow_ms = seconds * 1000.0
        if failover is not None and failover not in ("auto", "manual", "none"):
            raise UsageError(f"invalid --failover {failover!r}: choose auto, manual, none")
        specs = gather(name, faults, faults_file, load.duration_s)
        return cls(
            load=load,
            faults=specs,
            name=name,
            failover=failover,
            slow_ms=slow_ms,
            writers=1 if load.users < 4 else 2,
        )


@dataclass(frozen=True)
class _Plan:
    ctx: RunContext
    injector: FaultInjector
    planned: list[PlannedFault]
    mode: FailoverMode
    promotion: Promotion | None


def _plan(spec: DrillSpec, project: Project | None) -> _Plan:
    """Everything checked against the running stack, before any load."""
    ctx = prepare(spec.load, project)
    target = ctx.target
    assert target is not None, "DrillSpec refuses --host"
    injector = require(target.faults(), target.name, "drill", target.guide)
    services = injector.targets()
    planned = plan(spec.faults, services, spec.load.duration_s)
    for fault in planned:
        reason = injector.refusal(fault.kind, fault.target)
        if reason is not None:
            raise Unsupported(
                f"{fault.spec.text}: {reason}",
                hint=f"see {target.guide} for what the {target.name} target offers",
            )
    replication = target.replication()
    promotion = replication.promotion() if replication is not None else None
    standbys = sum(1 for s in services if s.role == "standby")
    mode = failover_mode(
        spec.failover, planned, standbys=standbys, can_promote=promotion is not None
    )
    kills_primary = any(p.kind == "kill" and p.target.role == "primary" for p in planned)
    if mode == "auto" and kills_primary:
        promotion = require(promotion, target.name, "drill --failover auto", target.guide)
    return _Plan(ctx, injector, planned, mode, promotion)


def _drill_env(spec: DrillSpec) -> dict[str, str]:
    return {
        DRILL_BUCKET_ENV: str(BUCKET_MS),
        DRILL_SLOW_ENV: f"{spec.slow_ms:g}",
        DRILL_WRITERS_ENV: str(spec.writers),
        DRILL_WRITER_RATE_ENV: f"{spec.writer_rate:g}",
        DRILL_TIMEOUT_ENV: f"{WRITER_TIMEOUT_S:g}",
    }


def run_drill(
    spec: DrillSpec,
    project: Project | None,
    *,
    on_progress: ProgressCallback | None = None,
    on_step: StepCallback = no_steps,
    on_note: Notify = no_steps,
) -> LoadTestOutcome:
    """Check, load with faults, heal, read back, measure, write every report form.

    ``on_note`` gets what the user must know at once (a manual failover to run, a fault that
    could not be injected, what was left unhealthy after an interrupt)."""
    drill = _plan(spec, project)
    ctx = drill.ctx
    target = ctx.target
    assert target is not None
    run_dir = (spec.load.out or default_run_dir(project)).resolve()
    job = locust_job(ctx, run_dir, env=_drill_env(spec), extra_scripts=(WRITER_SCRIPT,))
    runner = FaultRunner(
        drill.injector,
        drill.planned,
        failover=drill.mode,
        promotion=drill.promotion,
        on_step=on_step,
        on_note=on_note,
    )

    def progress(p: Progress) -> None:
        if p.started_at is not None:
            runner.begin(p.started_at)
        if on_progress is not None:
            on_progress(p)

    heal_timeout = project.config.stack.ready_timeout * 2 if project is not None else 60.0
    restarts_before = drill.injector.restarts()
    runner.start()
    finished = False
    try:
        with sampling(target if spec.load.telemetry else None) as sampler:
            run = execute(ctx, job, progress)
        observed = runner.finish()
        after = _heal(drill, runner, heal_timeout, on_step)
        finished = True
    finally:
        if not finished:
            # Failed or interrupted: nothing stays frozen, and what is still down is said.
            runner.finish()
            for note in _heal(drill, runner, heal_timeout, on_step, rejoin=False):
                on_note(note)
    origin = origin_of(run.metrics) or run.started_at.timestamp()
    on_step("reading the acknowledged writes back from the primary")
    verified = rpo.verify(
        run.metrics.writes, drill.injector.read_tasks, source=f"the {target.name} stack's primary"
    )
    faults = measure.measure(observed, run.metrics, origin=origin, sustain_s=spec.sustain_s)
    _count_restarts(faults, restarts_before, drill.injector.restarts(), runner.restarts_seen)
    report = report_of(ctx, run, ctx.replicas, sampler, faults=faults, rpo=verified)
    report.drill = DrillInfo(
        name=spec.name,
        failover=drill.mode,
        bucket_ms=BUCKET_MS,
        slow_ms=spec.slow_ms,
        sustain_s=spec.sustain_s,
        writers=spec.writers,
        after=after,
    )
    _note_drill(report)
    return LoadTestOutcome(report=report, run_dir=run_dir, files=write_all(report, run_dir))


def _count_restarts(
    faults: list[FaultResult],
    before: dict[str, int],
    after: dict[str, int],
    seen: dict[str, int],
) -> None:
    """Each faulted service's restarts by the target's restart policy during the drill: the
    count after it, or the one seen when the service came back if that is higher (a failed
    over primary is fenced and rejoins as a new record, which starts counting from zero)."""
    for fault in faults:
        if fault.service not in before:
            continue
        latest = max(after.get(fault.service, 0), seen.get(fault.service, 0))
        if fault.service in after or fault.service in seen:
            fault.restarts = max(latest - before[fault.service], 0)


def _heal(
    drill: _Plan,
    runner: FaultRunner,
    timeout: float,
    on_step: StepCallback,
    *,
    rejoin: bool = True,
) -> list[str]:
    """Bring back what the drill killed; after a failover, the old primary rejoins as a
    standby (``rejoin``) or is named. The stack's state afterwards, as notes."""
    failed_over = {f.old_primary for f in runner.failovers if f.new_primary is not None}
    notes: list[str] = []
    try:
        notes += drill.injector.heal(
            [name for name in runner.killed if name not in failed_over], timeout, on_step
        )
    except TaskscaleError as exc:
        notes.append(f"could not check the killed services: {exc.message}")
    for old in sorted(n for n in failed_over if n is not None):
        if not rejoin or drill.promotion is None:
            notes.append(
                f"{old} was failed over and is detached: `taskscale replicate rejoin {old}` "
                "brings it back as a standby"
            )
            continue
        on_step(f"{old} rejoins as a standby (taskscale replicate rejoin {old})")
        try:
            drill.promotion.rejoin(old, on_step)
        except TaskscaleError as exc:
            notes.append(f"{old} could not rejoin: {exc.message}")
        else:
            notes.append(f"{old} rejoined as a standby of the new primary")
    return notes


def _note_drill(report: Report) -> None:
    """The drill's caveats, in every form."""
    info = report.drill
    if info is None:
        return
    report.notes.append(
        f"{info.writers} of the users are the drill's writers (requests named '... (drill)'): "
        "they exercise every operation type several times a second and their acknowledged "
        "writes are the RPO's sample"
    )
    report.notes.extend(f"after the drill: {note}" for note in info.after)
