"""Issue 13's four resilience numbers on the local target, in one run, with pass/fail.

    python bench/resilience.py [--duration 45] [--at 25] [--users N] [--runs 3] [--keep DIR]

A fresh project (default broker: Redis streams) runs with 3 replicas on free loopback ports
(real PostgreSQL, Redis, nginx, uvicorn; its supervisor restarts crashed services; the restart
window is set to 2 s, as in bench/restart.py, so every kill is a first restart). The faults
are injected by the real ``taskscale drill --fault ... --json`` under the project's default
mixed load (one Locust process, the users of taskscale.toml unless ``--users``), one drill per
fault, each fault ``--at`` seconds into a ``--duration`` load (late enough that the 10 s
before it are past the users' setup: registering 50 users hashes 50 passwords):

1. ``kill:app-2``: failed requests in the whole run, and the p99 of the 5 s after the kill
   against the p99 of the 10 s before it (target: 0 failed; p99 after <= 3x before).
2. Local restart of a killed replica: ``bench/restart.py``'s own measurement
   (``replica_runs``: kill app-2 while a client loops ``GET /healthz`` through nginx; kill ->
   the first request app-2 answers through nginx), ``--runs`` kills with that light client
   loop and ``--runs`` under 2 load processes (target: every one <= 2 s).
3. ``stop:redis+5s`` (SIGSTOP, SIGCONT 5 s later): failed requests, and the p99 of the 5 s
   of the hang against the 10 s before it (target: 0 failed; p99 during <= before + 100 ms).
4. ``kill:worker`` (it relays the outbox and consumes the events): once the load ended, wait
   (bounded) for the outbox to be published and consumed, then count in PostgreSQL the
   events (outbox rows) of the drill without a notification row (lost), and notification
   rows beyond one per event or for no event (duplicated); the events are also checked
   against the task writes the API acknowledged during the drill (target: 0 lost, 0 dup).

The p99s come from the drill's per-second HDR histograms (``histograms.json`` in its run
directory; whole seconds by completion time, as ``taskscale drill`` measures its window).
Everything is stopped at the end, even on failure. One run on whatever machine this is:
record the numbers with that caveat.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from restart import loaded, replica_runs

from taskscale import proc
from taskscale.config import load_project
from taskscale.drill.measure import p99_of
from taskscale.loadgen.metrics import RunMetrics
from taskscale.report.io import HISTOGRAMS_FILE
from taskscale.scaffold import NewProjectSpec, create_project
from taskscale.targets.local import LocalTarget
from taskscale.targets.local.ports import move_to_free_ports

NAME = "resil"
COMMAND_TIMEOUT = 600.0
BEFORE_S = 10  # seconds of the load before a fault that give its "before" p99
AFTER_S = 5  # the "5 s after the kill" and "for 5 s"
DRAIN_TIMEOUT = 60.0
WRITES = ("POST", "PATCH", "PUT", "DELETE")


@dataclass
class Row:
    measure: str
    value: str
    target: str
    ok: bool


@dataclass
class Stack:
    project: Path
    target: LocalTarget
    api: str
    postgres_port: int
    metrics_port: int  # the local worker's probes and /metrics

    def connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        creds = load_project(self.project).credentials()
        return psycopg.connect(
            host="127.0.0.1",
            port=self.postgres_port,
            user=creds.postgres_user,
            password=creds.postgres_password,
            dbname=creds.postgres_db,
            autocommit=True,
            connect_timeout=5,
        )


@contextlib.contextmanager
def stack(keep: Path | None) -> Iterator[Stack]:
    root = keep or Path(tempfile.mkdtemp(prefix="bench-resilience-"))
    project = create_project(NewProjectSpec(name=NAME, output_dir=root, git=False)).path
    config = project / "taskscale.toml"
    ports = move_to_free_ports(config)
    config.write_text(config.read_text().replace("window_seconds = 60.0", "window_seconds = 2.0"))
    target = LocalTarget(load_project(project))
    try:
        target.up(3)
        api = f"http://127.0.0.1:{ports['api']}"
        yield Stack(project, target, api, ports["postgres"], ports["metrics"])
    finally:
        with contextlib.suppress(Exception):
            LocalTarget(load_project(project)).down()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


@dataclass
class Drill:
    report: dict[str, Any]
    metrics: RunMetrics
    injected_epoch: float

    @property
    def fault(self) -> dict[str, Any]:
        faults: list[dict[str, Any]] = self.report["faults"]
        return faults[0]

    def p99(self, start: float, end: float) -> float | None:
        """p99 (ms) of the whole seconds overlapping [start, end) (epoch)."""
        return p99_of(self.metrics, list(range(math.floor(start), math.ceil(end))))

    def before_after(self) -> tuple[float | None, float | None]:
        at = self.injected_epoch
        return self.p99(at - BEFORE_S, at), self.p99(at, at + AFTER_S)

    def failed(self) -> int:
        return int(self.report["total"]["failures"])

    def requests(self) -> int:
        return int(self.report["total"]["requests"])


def drill(stack: Stack, out: Path, fault: str, args: argparse.Namespace) -> Drill:
    argv = [
        sys.executable, "-m", "taskscale", "drill", "--fault", fault, "--scenario", "mixed",
        "--duration", f"{args.duration}s", "--processes", "1", "--out", str(out),
        "--json", "--project", str(stack.project),
    ]  # fmt: skip
    if args.users is not None:
        argv += ["--users", str(args.users)]
    done = proc.run(argv, timeout=COMMAND_TIMEOUT, check=False)
    if not done.stdout.strip():
        raise SystemExit(f"drill {fault} failed ({done.returncode}): {done.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(done.stdout)
    metrics = RunMetrics.load(out / HISTOGRAMS_FILE)
    injected = float(report["origin_epoch"]) + float(report["faults"][0]["injected_at_s"])
    return Drill(report, metrics, injected)


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def replica_kill(stack: Stack, out: Path, args: argparse.Namespace) -> list[Row]:
    run = drill(stack, out, f"kill:app-2@{args.at}s", args)
    before, after = run.before_after()
    fault = run.fault
    print(
        f"kill:app-2: {run.requests()} requests, {run.failed()} failed "
        f"(window: {fault['failed_requests']}); p99 {ms(before)} before, {ms(after)} in the "
        f"{AFTER_S} s after; restarts {fault['restarts']}, back at +"
        f"{(fault['service_back_at_s'] or 0) - fault['injected_at_s']:.3f} s"
    )
    ratio = None if before is None or after is None else after / before
    return [
        Row("replica SIGKILL: failed requests", f"{run.failed()} of {run.requests()}", "0",
            run.failed() == 0),
        Row(
            f"replica SIGKILL: p99 {AFTER_S} s after / {BEFORE_S} s before",
            f"{ms(after)} / {ms(before)} = {'-' if ratio is None else f'{ratio:.2f}x'}",
            "<= 3x",
            ratio is not None and ratio <= 3.0,
        ),
    ]  # fmt: skip


def replica_restart(stack: Stack, args: argparse.Namespace) -> list[Row]:
    instance = f"{NAME}-app-2"
    light = replica_runs(stack.target, stack.api, instance, args.runs)
    seconds = args.runs * 4.0 + 3
    with loaded(stack.api, 2, seconds) as counts:
        time.sleep(2.0)  # the load settles
        under = replica_runs(stack.target, stack.api, instance, args.runs)
    times = light["behind_nginx"] + under["behind_nginx"]
    print(
        f"restart of app-2 (kill -> back behind nginx): light loop "
        f"{[round(x, 3) for x in light['behind_nginx']]} s, under load "
        f"{[round(x, 3) for x in under['behind_nginx']]} s (load sent/failed {counts}); "
        f"/readyz {[round(x, 3) for x in light['ready'] + under['ready']]} s"
    )
    failed = int(sum(light["failed_requests"]) + sum(under["failed_requests"]))
    failed += sum(f for _, f in counts)
    return [
        Row(
            f"replica restart, kill -> behind nginx (worst of {len(times)})",
            f"{max(times):.3f} s (median {sorted(times)[len(times) // 2]:.3f} s)",
            "<= 2 s",
            max(times) <= 2.0,
        ),
        Row("replica restart: failed GETs meanwhile", str(failed), "-", True),
    ]


def redis_hang(stack: Stack, out: Path, args: argparse.Namespace) -> list[Row]:
    run = drill(stack, out, f"stop:redis@{args.at}s+{AFTER_S}s", args)
    before, during = run.before_after()
    print(
        f"stop:redis+{AFTER_S}s: {run.requests()} requests, {run.failed()} failed "
        f"(window: {run.fault['failed_requests']}, slow {run.fault['slow_requests']}); "
        f"p99 {ms(before)} before, {ms(during)} during the hang"
    )
    added = None if before is None or during is None else during - before
    return [
        Row("Redis SIGSTOP 5 s: failed requests", f"{run.failed()} of {run.requests()}", "0",
            run.failed() == 0),
        Row(
            "Redis SIGSTOP 5 s: p99 during - before",
            f"{ms(during)} - {ms(before)} = {'-' if added is None else f'{added:+.1f} ms'}",
            "<= +100 ms",
            added is not None and added <= 100.0,
        ),
    ]  # fmt: skip


COUNT_SQL = """
SELECT
  (SELECT count(*) FROM outbox WHERE id > %(since)s),
  (SELECT count(*) FROM outbox WHERE id > %(since)s AND published_at IS NULL),
  (SELECT count(*) FROM outbox o WHERE o.id > %(since)s
     AND NOT EXISTS (SELECT 1 FROM notifications n WHERE n.event_id = o.event_id)),
  (SELECT count(*) - count(DISTINCT event_id) FROM notifications),
  (SELECT count(*) FROM notifications n
     WHERE NOT EXISTS (SELECT 1 FROM outbox o WHERE o.event_id = n.event_id)),
  (SELECT count(*) FROM outbox WHERE id > %(since)s AND created_at >= to_timestamp(%(down)s)
     AND created_at < to_timestamp(%(back)s))
"""


def worker_counters(stack: Stack) -> dict[str, float]:
    """The (restarted) worker's event counters from its /metrics: handled, and redelivered
    events it found already handled (what the kill left unacknowledged)."""
    url = f"http://127.0.0.1:{stack.metrics_port}/metrics"
    counters: dict[str, float] = {}
    try:
        text = httpx.get(url, timeout=10, trust_env=False).text
    except httpx.HTTPError:
        return counters  # printed as nan: the table's counts come from PostgreSQL anyway
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        for wanted in ("events_processed", "events_duplicates"):
            if not line.startswith("#") and name.removesuffix("_total").endswith(wanted):
                counters[wanted] = float(value)
    return counters


def worker_kill(stack: Stack, out: Path, args: argparse.Namespace) -> list[Row]:
    with stack.connect() as conn:
        row = conn.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()
        since = int(row[0]) if row else 0
    run = drill(stack, out, f"kill:worker@{args.at}s", args)
    fault = run.fault
    back = float(run.report["origin_epoch"]) + float(
        fault["service_back_at_s"] or fault["injected_at_s"]
    )
    params = {"since": since, "down": run.injected_epoch, "back": back}
    counts: tuple[int, ...] = ()

    def drained() -> bool:
        nonlocal counts
        with stack.connect() as conn:
            got = conn.execute(COUNT_SQL, params).fetchone()
        counts = tuple(int(x) for x in got) if got else ()
        return bool(counts) and counts[1] == 0 and counts[2] == 0

    drained_in_time = proc.poll_until(drained, DRAIN_TIMEOUT, 0.2, 0.2)
    worker = worker_counters(stack)
    events, unpublished, lost, dup_ids, orphans, during_outage = counts
    acknowledged = sum(
        int(e["requests"]) - int(e["failures"])
        for e in run.report["endpoints"]
        if e["method"] in WRITES and "/tasks" in e["name"]
    )
    print(
        f"kill:worker: {run.requests()} requests, {run.failed()} failed; worker back at +"
        f"{(fault['service_back_at_s'] or fault['injected_at_s']) - fault['injected_at_s']:.3f} s, "
        f"restarts {fault['restarts']}; {events} events in the drill ({during_outage} created "
        f"while the worker was down), {acknowledged} task writes acknowledged by the API; "
        f"unpublished {unpublished}, without a notification {lost}, duplicate notification "
        f"ids {dup_ids}, notifications for no event {orphans}; the restarted worker: "
        f"{worker.get('events_processed', math.nan):g} handled, "
        f"{worker.get('events_duplicates', math.nan):g} redelivered and skipped as already handled"
        + ("" if drained_in_time else f" (NOT drained within {DRAIN_TIMEOUT:g} s)")
    )
    return [
        Row(
            "worker SIGKILL: events without a notification (lost)",
            f"{lost} of {events} ({during_outage} created during the outage)",
            "0",
            drained_in_time and lost == 0 and events > 0,
        ),
        Row(
            "worker SIGKILL: duplicated notifications",
            f"{dup_ids + orphans} of {events}",
            "0",
            dup_ids + orphans == 0,
        ),
        Row(
            "worker SIGKILL: events vs acknowledged task writes",
            f"{events} vs {acknowledged}",
            "equal",
            events == acknowledged,
        ),
    ]


def table(rows: list[Row]) -> str:
    lines = ["| measure | result | target | |", "|---|---|---|---|"]
    lines += [f"| {r.measure} | {r.value} | {r.target} | {'pass' if r.ok else '**FAIL**'} |"
              for r in rows]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=45, help="seconds of load per drill")
    parser.add_argument("--at", type=int, default=25, help="the fault, seconds into the load")
    parser.add_argument("--users", type=int, help="default: taskscale.toml's [loadtest] users")
    parser.add_argument("--runs", type=int, default=3, help="restart kills, per load kind")
    parser.add_argument("--keep", type=Path, help="keep the project and its runs here")
    args = parser.parse_args()
    if args.at < BEFORE_S or args.at + AFTER_S + 3 > args.duration:
        raise SystemExit(f"--at must be >= {BEFORE_S} and leave {AFTER_S + 3} s of load after")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()}")
    rows: list[Row] = []
    with stack(args.keep) as running:
        out = running.project / "bench-runs"
        rows += replica_kill(running, out / "replica-kill", args)
        rows += replica_restart(running, args)
        rows += redis_hang(running, out / "redis-stop", args)
        rows += worker_kill(running, out / "worker-kill", args)
    print(f"load average after: {os.getloadavg()}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
