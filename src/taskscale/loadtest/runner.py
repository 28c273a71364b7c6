"""Run Locust headless as a subprocess (master + forked workers) and collect exact metrics.

``locust -f SCENARIO,locust_plugin.py --headless --processes N``: the plugin records every
request into HDR histograms inside each worker and writes them to ``raw/`` when the test
stops; this module merges them. ``--stop-timeout`` lets users finish the request they are in at
the end, so no request is cut off half-way: every request the server logged is also measured
(count reconciliation). While Locust runs we sample its processes' CPU (saturation) and relay
the plugin's ``progress.json`` to a callback once a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from taskscale import proc
from taskscale.errors import CommandFailed
from taskscale.loadtest.channel import (
    PROGRESS_ENV,
    RATE_ENV,
    RAW_DIR_ENV,
    STOP_WAIT_ENV,
    WORKERS_ENV,
)
from taskscale.loadtest.metrics import RunMetrics
from taskscale.report.model import GeneratorLoad

# Seconds Locust may take beyond duration + stop timeout (start-up, worker hand-shake, CSVs)
# before we give up on it.
GRACE_S = 60.0
# Passed to Locust as a file next to the scenario; never imported by taskscale itself (its
# listeners would register twice).
PLUGIN = Path(__file__).resolve().with_name("locust_plugin.py")
SATURATION_PCT = 90.0
CONTENDED_PCT = 75.0
HOST_BUSY_PCT = 95.0


@dataclass(frozen=True)
class Progress:
    elapsed_s: float
    duration_s: float
    users: int
    rps: float
    p95_ms: float | None
    requests: int
    failures: int
    label: str = ""
    started: bool = True

    def line(self) -> str:
        prefix = f"{self.label} " if self.label else ""
        if not self.started:
            return f"{prefix}starting Locust ({self.elapsed_s:.0f}s)"
        p95 = f"{self.p95_ms:.0f} ms" if self.p95_ms is not None else "-"
        errors = f"{self.failures / self.requests * 100:.2f}%" if self.requests else "0%"
        return (
            f"{prefix}{min(self.elapsed_s, self.duration_s):.0f}/{self.duration_s:.0f}s  "
            f"users {self.users}  {self.rps:.0f} req/s  p95 {p95}  errors {errors} "
            f"({self.failures}/{self.requests})"
        )


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class LocustJob:
    locustfile: Path
    host: str
    users: int
    spawn_rate: float
    duration_s: float
    processes: int
    run_dir: Path
    rate: float | None = None
    stop_timeout_s: float = 10.0
    env: Mapping[str, str] | None = None
    label: str = ""


@dataclass(frozen=True)
class LocustRun:
    metrics: RunMetrics
    generator: GeneratorLoad
    started_at: datetime
    finished_at: datetime
    locust_log: Path
    notes: list[str]


def locust_argv(job: LocustJob) -> list[str]:
    argv = [sys.executable, "-m", "locust", "-f", f"{job.locustfile},{PLUGIN}"]
    argv += [*headless_options(job), "--csv", str(job.run_dir / "locust"), "--csv-full-history"]
    if job.processes > 1:
        argv += ["--processes", str(job.processes)]
    return argv


def headless_options(job: LocustJob) -> list[str]:
    """The options of a bounded headless run (wherever its processes are)."""
    return [
        "--headless",
        "--host",
        job.host,
        "--users",
        str(job.users),
        "--spawn-rate",
        f"{job.spawn_rate:g}",
        "--run-time",
        f"{max(round(job.duration_s), 1)}s",
        "--stop-timeout",
        f"{job.stop_timeout_s:g}",
        "--only-summary",
        "--exit-code-on-error",
        "0",
    ]


def run_locust(job: LocustJob, on_progress: ProgressCallback | None = None) -> LocustRun:
    """Run one Locust test to completion (bounded in time) and return its merged metrics."""
    raw_dir = job.run_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    progress_file = job.run_dir / "progress.json"
    log = job.run_dir / "locust.log"
    env = {
        **os.environ,
        **(job.env or {}),
        RAW_DIR_ENV: str(raw_dir),
        PROGRESS_ENV: str(progress_file),
        RATE_ENV: f"{job.rate:g}" if job.rate else "",
        WORKERS_ENV: str(job.processes if job.processes > 1 else 0),
        STOP_WAIT_ENV: f"{job.stop_timeout_s + 5:g}",
    }
    started = datetime.now(UTC)
    start = time.monotonic()
    deadline = start + job.duration_s + job.stop_timeout_s + GRACE_S
    sampler = _CpuSampler()
    reader = ProgressReader(progress_file, job)
    pid = proc.spawn(locust_argv(job), log_path=log, cwd=job.run_dir, env=env)
    try:
        sampler.attach(pid)
        while proc.pid_alive(pid):
            if time.monotonic() > deadline:
                raise CommandFailed(
                    f"locust did not finish within {deadline - start:.0f}s; stopped it",
                    detail=proc.tail(log.read_text(errors="replace")),
                )
            proc.poll_until(lambda: not proc.pid_alive(pid), 1.0)
            sampler.sample()
            if on_progress is not None:
                on_progress(reader.read(time.monotonic() - start))
    finally:
        proc.terminate(pid, timeout=10)
    finished = datetime.now(UTC)
    dumps = sorted(raw_dir.glob("worker-*.json"))
    if not dumps:
        raise CommandFailed(
            "locust recorded no requests (it failed to start or the scenario sent nothing)",
            detail=proc.tail(log.read_text(errors="replace")) if log.exists() else None,
        )
    data = [json.loads(p.read_text(encoding="utf-8")) for p in dumps]
    metrics = RunMetrics.from_dumps(data)
    progress_file.unlink(missing_ok=True)
    notes = dump_notes(data, expected=job.processes if job.processes > 1 else 1)
    return LocustRun(
        metrics=metrics,
        generator=sampler.summary(job.processes),
        started_at=started,
        finished_at=finished,
        locust_log=log,
        notes=notes,
    )


def dump_notes(dumps: list[dict[str, Any]], *, expected: int) -> list[str]:
    """What the report must say when workers' measurements are missing or incomplete."""
    notes = []
    finals = sum(1 for item in dumps if item.get("final"))
    if finals < expected:
        notes.append(
            f"{expected - finals} of {expected} Locust worker(s) were stopped before their users "
            "finished (a user still in on_start or a slow request at the end): requests in "
            "flight then are missing from the counts"
        )
    if len(dumps) < expected:
        notes.append(f"only {len(dumps)} of {expected} Locust workers reported measurements")
    return notes


class ProgressReader:
    """Turns the plugin's progress.json into ``Progress``; req/s from successive counts."""

    def __init__(self, path: Path | None, job: LocustJob) -> None:
        self.path = path  # None: records are passed to ``parse`` (in-cluster runs)
        self.job = job
        self._last: tuple[float, int] | None = None
        self._rps = 0.0

    def read(self, since_spawn: float) -> Progress:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8")) if self.path else {}
        except (OSError, ValueError):
            data = {}
        return self.parse(data, since_spawn)

    def parse(self, data: dict[str, Any], since_spawn: float) -> Progress:
        """``Progress`` from one progress record of the plugin (``{}``: not started yet)."""
        started_at = data.get("started_at")
        requests = int(data.get("requests", 0))
        stamp = float(data.get("time", 0.0))
        if self._last is not None and stamp > self._last[0]:
            self._rps = (requests - self._last[1]) / (stamp - self._last[0])
        if stamp and (self._last is None or stamp > self._last[0]):
            self._last = (stamp, requests)
        p95 = data.get("p95_ms")
        return Progress(
            elapsed_s=time.time() - float(started_at) if started_at else since_spawn,
            duration_s=self.job.duration_s,
            users=int(data.get("users", 0)),
            rps=self._rps,
            p95_ms=float(p95) if p95 is not None else None,
            requests=requests,
            failures=int(data.get("failures", 0)),
            label=self.job.label,
            started=started_at is not None,
        )


class _CpuSampler:
    """CPU of Locust's process tree (master + workers) and of the whole host, once a second."""

    def __init__(self) -> None:
        self._root: psutil.Process | None = None
        self._known: dict[int, psutil.Process] = {}
        self.totals: list[float] = []
        self.busiest: list[float] = []
        self.host: list[float] = []
        psutil.cpu_percent(None)

    def attach(self, pid: int) -> None:
        try:
            self._root = psutil.Process(pid)
        except psutil.Error:
            self._root = None

    def sample(self) -> None:
        if self._root is None:
            return
        try:
            processes = [self._root, *self._root.children(recursive=True)]
        except psutil.Error:
            return
        values = []
        for process in processes:
            known = self._known.get(process.pid)
            if known is None:
                # The first reading of a process is 0 by definition; it primes the next one.
                self._known[process.pid] = process
                with contextlib.suppress(psutil.Error):
                    process.cpu_percent(None)
                continue
            try:
                values.append(known.cpu_percent(None))
            except psutil.Error:
                continue
        if values:
            self.totals.append(round(sum(values), 1))
            self.busiest.append(round(max(values), 1))
            self.host.append(round(psutil.cpu_percent(None) * (psutil.cpu_count() or 1), 1))

    def summary(self, processes: int) -> GeneratorLoad:
        return judge_generator(
            self.totals, self.busiest, self.host, processes=processes, cpus=os.cpu_count() or 1
        )


def judge_generator(
    totals: list[float],
    busiest: list[float],
    host: list[float],
    *,
    processes: int,
    cpus: int,
) -> GeneratorLoad:
    """Was the generator the bottleneck? Medians over the steady part of the run.

    Saturated when the generator's processes together used >= 90 % of the cores they can use,
    when the busiest one (a Locust worker is a single gevent thread) ran at >= 90 % of a core, or
    at >= 75 % while the whole machine had no idle CPU.
    """
    # Ignore ramp-up and shutdown: the first two and the last sample.
    steady_total = totals[2:-1] or totals
    steady_busiest = busiest[2:-1] or busiest
    steady_host = host[2:-1] or host
    capacity = min(processes, cpus) * 100.0
    total_median = statistics.median(steady_total) if steady_total else 0.0
    busiest_median = statistics.median(steady_busiest) if steady_busiest else 0.0
    host_median = statistics.median(steady_host) if steady_host else 0.0
    host_busy = host_median >= HOST_BUSY_PCT / 100 * cpus * 100
    saturated = (
        total_median >= SATURATION_PCT / 100 * capacity
        or busiest_median >= SATURATION_PCT
        # On a machine with no idle CPU, a worker that still gets most of a core is CPU-bound:
        # it would send more if the system under test left it the cycles.
        or (host_busy and busiest_median >= CONTENDED_PCT)
    )
    notes = []
    if saturated:
        notes.append(
            f"the load generator was the bottleneck: its processes used a median "
            f"{total_median:.0f}% CPU (busiest process {busiest_median:.0f}%) of "
            f"{capacity:.0f}% available; measured throughput is a lower bound of what the "
            "system can serve (use more --processes or a bigger machine)"
        )
    if host_busy:
        notes.append(
            f"all {cpus} CPUs of this machine were busy (median {host_median:.0f}%): the "
            "generator and the system under test compete for them"
        )
    return GeneratorLoad(
        processes=processes,
        cpu_count=cpus,
        cpu_percent_samples=totals,
        busiest_process_samples=busiest,
        host_cpu_percent_samples=host,
        cpu_percent_peak=max(totals, default=0.0),
        saturated=saturated,
        note="; ".join(notes) or None,
    )
