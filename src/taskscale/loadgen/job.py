"""The load generator's contract: what to run (``LocustJob``), what comes back (``LocustRun``),
live progress, and the ``LoadGenerator`` interface a target implements to run Locust next to
its stack (``Target.load_generator``). Shared by the local run and the in-cluster one.
"""

from __future__ import annotations

import abc
import json
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from taskscale.loadgen.metrics import RunMetrics
from taskscale.report.model import GeneratorLoad

# Seconds Locust may take beyond duration + stop timeout (start-up, worker hand-shake, CSVs)
# before we give up on it.
GRACE_S = 60.0
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
    # When Locust's test started (epoch seconds; None until it has).
    started_at: float | None = None

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
    # More Locust files from taskscale.loadgen loaded after the plugin (a drill's writers).
    extra_scripts: tuple[str, ...] = ()


@dataclass(frozen=True)
class LocustRun:
    metrics: RunMetrics
    generator: GeneratorLoad
    started_at: datetime
    finished_at: datetime
    locust_log: Path
    notes: list[str]


class LoadGenerator(abc.ABC):
    """Runs Locust next to the stack (e.g. as pods in the cluster) instead of on this machine."""

    # The API as the generator reaches it (e.g. the app Service's in-cluster name).
    host: str

    @abc.abstractmethod
    def check_ready(self) -> None:
        """A TargetError when the app cannot take load yet (checked before any is sent)."""

    @abc.abstractmethod
    def run(self, job: LocustJob, on_progress: ProgressCallback | None) -> LocustRun:
        """Run ``job`` to completion (bounded in time), clean up, return the merged metrics."""


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
            started_at=float(started_at) if started_at else None,
        )


def judge_generator(
    totals: list[float],
    busiest: list[float],
    host: list[float],
    *,
    processes: int,
    cpus: int,
    first_sample_epoch: float | None = None,
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
        first_sample_epoch=first_sample_epoch,
    )
