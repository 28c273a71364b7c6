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
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

from taskscale import proc
from taskscale.errors import CommandFailed
from taskscale.loadgen.channel import (
    PROGRESS_ENV,
    RATE_ENV,
    RAW_DIR_ENV,
    STOP_WAIT_ENV,
    WORKERS_ENV,
)
from taskscale.loadgen.job import (
    GRACE_S,
    LocustJob,
    LocustRun,
    ProgressCallback,
    ProgressReader,
    dump_notes,
    headless_options,
    judge_generator,
)
from taskscale.loadgen.metrics import RunMetrics
from taskscale.report.model import GeneratorLoad

# Passed to Locust as a file next to the scenario; never imported by taskscale itself (its
# listeners would register twice).
PLUGIN = Path(__file__).resolve().with_name("locust_plugin.py")


def locust_argv(job: LocustJob) -> list[str]:
    scripts = [job.locustfile, PLUGIN, *(PLUGIN.with_name(name) for name in job.extra_scripts)]
    argv = [sys.executable, "-m", "locust", "-f", ",".join(str(s) for s in scripts)]
    argv += [*headless_options(job), "--csv", str(job.run_dir / "locust"), "--csv-full-history"]
    if job.processes > 1:
        # The master and its forked workers talk over a port, by default the fixed 5557 on every
        # interface: two runs at once on one machine would collide (or join each other's
        # workers). A free loopback port per run instead.
        port = str(free_loopback_port())
        argv += ["--processes", str(job.processes)]
        argv += ["--master-bind-host", "127.0.0.1", "--master-bind-port", port]
        argv += ["--master-host", "127.0.0.1", "--master-port", port]
    return argv


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now (the kernel's choice; Locust binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


class _CpuSampler:
    """CPU of Locust's process tree (master + workers) and of the whole host, once a second."""

    def __init__(self) -> None:
        self._root: psutil.Process | None = None
        self._known: dict[int, psutil.Process] = {}
        self.totals: list[float] = []
        self.busiest: list[float] = []
        self.host: list[float] = []
        self.first_epoch: float | None = None
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
            if self.first_epoch is None:
                self.first_epoch = time.time()
            self.totals.append(round(sum(values), 1))
            self.busiest.append(round(max(values), 1))
            self.host.append(round(psutil.cpu_percent(None) * (psutil.cpu_count() or 1), 1))

    def summary(self, processes: int) -> GeneratorLoad:
        return judge_generator(
            self.totals,
            self.busiest,
            self.host,
            processes=processes,
            cpus=os.cpu_count() or 1,
            first_sample_epoch=self.first_epoch,
        )
