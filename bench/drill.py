"""`taskscale drill` on the local target: measured RTO and RPO, and what telemetry costs.

    python bench/drill.py [--duration 24] [--users 10] [--pairs 3] [--keep DIR] [--telemetry-only]
                          [--in-run 240] [--block 6] [--rate 1]

A fresh project runs with 2 replicas and one streaming standby on free loopback ports (its
supervisor restarts crashed services), and every drill is the real command (`taskscale drill
... --json`, one Locust process):

1. ``primary-failover`` with ``replicate --sync`` and ``--failover auto``: RPO (acknowledged
   writes lost or changed) and RTO (kill -> sustained successful requests of every type), the
   failover's own time, the failed requests.
2. The same with asynchronous replication (the primary is whichever node is primary now).
3. ``replica-crash``: failed requests and RTO while the supervisor restarts ``app-1``, and its
   restart count.
4. Telemetry cost: ``taskscale loadtest`` with and without ``--no-telemetry``, alternating,
   ``--pairs`` times each: the generator's requests/s, and the ratio of the medians. Runs of
   one setting spread by 10-20 % on a 2-core machine, far more than the 2 % budget, so the
   cost is also measured directly: the CPU every process of the stack and this one use in
   ``--cpu-window`` seconds while the local target's telemetry is sampled once a second, minus
   the same window without sampling, as a share of the machine's cores (on a machine the load
   saturates, the throughput the sampling takes away).
5. Telemetry cost within one run (``--in-run SECONDS``): one ``taskscale loadtest
   --no-telemetry``, while this process samples the stack's telemetry (the same
   ``target.telemetry().sample()`` once a second that `taskscale loadtest` runs) in alternate
   blocks of ``--block`` seconds, in ABBA order (on off, off on, ...) so that a slow drift of
   the machine or the database cancels out. The load's per-second throughput
   (``report.json``'s timeline, whole seconds inside a block, its first second left out) is
   averaged per block; each adjacent on/off pair gives one relative difference, and the cost
   is their mean with a 95 % confidence interval (Student's t). Alternating every few seconds
   instead of every run is what makes a 2 % budget measurable here: runs of one setting
   spread by 10-20 %, seconds next to each other do not.
   Adjacent blocks still differ by about 10 %, so a cost of 1 % at one sample a second takes
   hours of load to resolve. ``--rate R`` samples R times a second in the sampled blocks: the
   cost is R times as large and resolves in minutes; divided by R it is the cost of one sample
   a second, provided a sample costs no less at R a second than at one, which the CPU
   accounting then checks (it runs at one and at R samples a second).

Everything is stopped at the end, even on failure. One run on whatever machine this is:
record the numbers with that caveat.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from taskscale import proc
from taskscale.config import load_project
from taskscale.scaffold import NewProjectSpec, create_project
from taskscale.targets.local import LocalTarget
from taskscale.targets.local.ports import move_to_free_ports

COMMAND_TIMEOUT = 600.0


def cli(project: Path, *args: str) -> dict[str, Any]:
    """One taskscale command with --json; its JSON (a failed gate still prints the report)."""
    argv = [sys.executable, "-m", "taskscale", *args, "--json", "--project", str(project)]
    done = proc.run(argv, timeout=COMMAND_TIMEOUT, check=False)
    if not done.stdout.strip():
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    data: dict[str, Any] = json.loads(done.stdout)
    return data


@contextlib.contextmanager
def stack(keep: Path | None) -> Iterator[Path]:
    root = keep or Path(tempfile.mkdtemp(prefix="bench-drill-"))
    project = create_project(NewProjectSpec(name="bdrill", output_dir=root, git=False)).path
    move_to_free_ports(project / "taskscale.toml")
    target = LocalTarget(load_project(project))
    try:
        target.up(2)
        yield project
    finally:
        with contextlib.suppress(Exception):
            LocalTarget(load_project(project)).down()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


def drill(project: Path, out: Path, args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    return cli(
        project, "drill", *extra, "--duration", f"{args.duration}s", "--users", str(args.users),
        "--processes", "1", "--out", str(out),
    )  # fmt: skip


def show(title: str, report: dict[str, Any]) -> None:
    print(f"\n== {title}")
    rpo = report.get("rpo") or {}
    print(
        f"RPO: {rpo.get('lost')} lost, {rpo.get('changed')} changed of "
        f"{rpo.get('acknowledged_writes')} acknowledged writes"
    )
    for fault in report.get("faults", []):
        failed = sum(fault["failed_requests"].values())
        line = (
            f"{fault['spec']}: RTO {fault['rto_s']} s, detected +"
            f"{(fault['detected_at_s'] or fault['injected_at_s']) - fault['injected_at_s']:.3f} s, "
            f"{failed} failed of {fault['requests_in_window']} requests in the window, "
            f"p99 {fault['p99_before_ms']} -> {fault['p99_window_ms']} ms, "
            f"restarts {fault['restarts']}"
        )
        failover = fault.get("failover")
        if failover and failover.get("finished_at_s") is not None:
            took = failover["finished_at_s"] - failover["started_at_s"]
            line += f"; failover to {failover['new_primary']} took {took:.1f} s"
        print(line)
    total = report["total"]
    print(f"load: {total['requests']} requests, {total['failures']} failed, {total['rps']} req/s")
    for note in (report.get("drill") or {}).get("after", []):
        print(f"after: {note}")


def telemetry_cost(project: Path, out: Path, args: argparse.Namespace) -> dict[int, float]:
    """Alternating runs (``--pairs``), then the CPU accounting at one sample a second and at
    ``--rate``: CPU seconds per sample by rate."""
    rates: dict[bool, list[float]] = {True: [], False: []}
    for i in range(args.pairs):
        for telemetry in (True, False) if i % 2 == 0 else (False, True):
            flag = "--telemetry" if telemetry else "--no-telemetry"
            report = cli(
                project, "loadtest", flag, "--duration", f"{args.load_duration}s",
                "--users", str(args.users), "--processes", "1", "--out", str(out / f"t{i}{flag}"),
            )  # fmt: skip
            rates[telemetry].append(float(report["total"]["rps"]))
    if args.pairs:
        with_t, without = statistics.median(rates[True]), statistics.median(rates[False])
        print("\n== telemetry cost (generator req/s, alternating runs)")
        print(f"with telemetry:    {rates[True]} (median {with_t:.1f})")
        print(f"without telemetry: {rates[False]} (median {without:.1f})")
        cost = 100 * (1 - with_t / without)
        print(f"with / without: {with_t / without:.3f} (cost {cost:+.1f} %)")
    cpu = {1: sampling_cpu(project, args.cpu_window)}
    if args.rate > 1:
        cpu[args.rate] = sampling_cpu(project, args.cpu_window, rate=args.rate)
    return cpu


# Student's t, two-sided 95 %, by degrees of freedom (1.96 beyond the table).
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}
T95 |= {11: 2.20, 12: 2.18, 13: 2.16, 14: 2.14, 15: 2.13, 16: 2.12, 17: 2.11, 18: 2.10}
T95 |= {19: 2.09, 20: 2.09, 25: 2.06, 30: 2.04, 40: 2.02, 60: 2.00}
WARMUP_S = 10.0  # users spawn and the hot set is created: left out of the comparison


def _t95(df: int) -> float:
    return next((T95[k] for k in sorted(T95) if k >= df), 1.96)


def telemetry_cost_in_run(
    project: Path, out: Path, args: argparse.Namespace
) -> tuple[float, float, float] | None:
    """The cost in percent of the generator's throughput, the half-width of its 95 % CI, and
    the sampling rate the sampled blocks reached; None with too few block pairs."""
    run = out / "in-run"
    argv = [
        # No --json: the report is read from --out, and a large stdout would fill the pipe
        # this process reads only at the end.
        sys.executable, "-m", "taskscale", "loadtest", "--no-telemetry",
        "--duration", f"{args.in_run}s", "--users", str(args.users), "--processes", "1",
        "--out", str(run), "--project", str(project),
    ]  # fmt: skip
    source = LocalTarget(load_project(project)).telemetry()
    blocks: list[tuple[float, float, bool]] = []  # (start, end, sampled), epoch seconds
    samples = 0
    try:
        with proc.start(argv, timeout=args.in_run + COMMAND_TIMEOUT) as load:
            source.sample()  # primes CPU readings and the PostgreSQL connection
            # Blocks start at once; those inside the load's first WARMUP_S are left out below.
            order = (True, False, False, True)
            while load.running():
                sampling = order[len(blocks) % len(order)]
                start = time.time()
                ticks = args.block * (args.rate if sampling else 1)
                for tick in range(ticks):
                    if not load.running():
                        break
                    if sampling:
                        source.sample()
                        samples += 1
                    time.sleep(max(0.0, start + (tick + 1) * args.block / ticks - time.time()))
                blocks.append((start, time.time(), sampling))
            load.finish("", check=False)
    finally:
        source.close()
    report = json.loads((run / "report.json").read_text())
    origin = float(report["origin_epoch"])
    rates = {int(point["t"]): float(point["rps"]) for point in report["timeline"]}
    means: list[float | None] = []  # per block, in order (None: no whole second inside)
    for start, end, _ in blocks:
        # Whole seconds of the timeline inside the block, without its first.
        inside = [
            rate
            for t, rate in rates.items()
            if origin + t >= start + 1.0 and origin + t + 1.0 <= end and t >= WARMUP_S
        ]
        means.append(statistics.fmean(inside) if inside else None)
    diffs = []
    for i in range(0, len(blocks) - 1, 2):  # blocks 2k and 2k+1: one sampled, one not
        a, b = means[i], means[i + 1]
        if a is not None and b is not None:
            on, off = (a, b) if blocks[i][2] else (b, a)
            diffs.append((on - off) / off)
    print(
        f"\n== telemetry cost within one run ({args.in_run} s, blocks of {args.block} s, "
        f"{args.rate} sample(s) a second in the sampled blocks)"
    )
    on_rates = [m for m, b in zip(means, blocks, strict=True) if m is not None and b[2]]
    off_rates = [m for m, b in zip(means, blocks, strict=True) if m is not None and not b[2]]
    print(
        f"blocks: {len(on_rates)} sampled (mean {statistics.fmean(on_rates or [0]):.1f} req/s), "
        f"{len(off_rates)} not (mean {statistics.fmean(off_rates or [0]):.1f} req/s); "
        f"{samples} samples"
    )
    if len(diffs) < 2:
        print("too few block pairs for an estimate: give --in-run more seconds")
        return None
    cost = -100 * statistics.fmean(diffs)
    half = 100 * _t95(len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    print(
        f"cost: {cost:+.2f} % of the generator's throughput (95 % CI {cost - half:+.2f} .. "
        f"{cost + half:+.2f} %, {len(diffs)} pairs; per pair: "
        f"{', '.join(f'{-100 * d:+.1f}' for d in diffs)})"
    )
    # The rate reached: a sample slower than 1/R s delays the next.
    r = samples / sum(end - start for start, end, sampled in blocks if sampled)
    if args.rate > 1:
        print(
            f"per sample a second (cost / {r:.2f}, the rate reached): {cost / r:+.2f} % (95 % CI "
            f"{(cost - half) / r:+.2f} .. {(cost + half) / r:+.2f} %); compare the CPU per "
            "sample at both rates below before reading it as the cost at one a second"
        )
    return cost, half, r


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def _stack_processes(target: LocalTarget) -> list[psutil.Process]:
    """Every process of the stack (each service and its children: PostgreSQL's backends,
    nginx's workers) and this one (the sampler runs here, as in `taskscale loadtest`)."""
    found = [psutil.Process()]
    for record in target.supervisor.load().services.values():
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(record.pid)
            found += [root, *root.children(recursive=True)]
    return found


def sampling_cpu(project: Path, window: int, rounds: int = 4, rate: int = 1) -> float:
    """CPU the stack and the sampler use in ``window`` seconds with ``rate`` telemetry samples
    a second, minus a window without sampling next to it (the idle stack's own background
    work: autovacuum, checkpoints, the worker's polling), ``rounds`` pairs in ABBA order."""
    target = LocalTarget(load_project(project))
    source = target.telemetry()
    per_sample: list[float] = []
    used: dict[bool, list[float]] = {True: [], False: []}
    try:
        source.sample()  # primes CPU readings and the PostgreSQL connection
        for i in range(rounds):
            pair: dict[bool, float] = {}
            for sampling in (False, True) if i % 2 == 0 else (True, False):
                processes = _stack_processes(target)
                before = _cpu_seconds(processes)
                start = time.monotonic()
                for tick in range(window * rate):  # samples evenly spread
                    if sampling:
                        source.sample()
                    time.sleep(max(0.0, start + (tick + 1) / rate - time.monotonic()))
                pair[sampling] = _cpu_seconds(processes) - before
                used[sampling].append(pair[sampling])
            per_sample.append((pair[True] - pair[False]) / (window * rate))
    finally:
        source.close()
    cores = psutil.cpu_count() or 1
    cost = statistics.median(per_sample)
    print(
        f"\n== telemetry cost, CPU accounting ({rounds} pairs of {window} s windows, "
        f"{rate} sample(s) a second)"
    )
    print(
        f"stack + sampler CPU per window without sampling: {[round(u, 2) for u in used[False]]}"
        f" s, with: {[round(u, 2) for u in used[True]]} s"
    )
    print(
        f"per sample: {1000 * cost:.1f} ms of CPU (median; per pair "
        f"{', '.join(f'{1000 * c:.1f}' for c in per_sample)}); "
        f"at one sample a second {100 * cost / cores:.2f} % of {cores} cores"
    )
    return cost


def verdict(in_run: tuple[float, float, float], cpu: dict[int, float]) -> None:
    """The cost of one sample a second from a run at R a second: divided by the rate reached,
    and scaled up by how much more CPU a sample takes at one a second than at R (never down)."""
    cost, half, rate = in_run
    scale = max(1.0, cpu[1] / cpu[max(cpu)]) if cpu[max(cpu)] > 0 else 1.0
    low, point, high = ((cost + d) / rate * scale for d in (-half, 0.0, half))
    print(f"\n== telemetry at one sample a second, from {rate:.2f} a second")
    print(
        f"cost {point:+.2f} % of the generator's throughput (95 % CI {low:+.2f} .. {high:+.2f} "
        f"%; divided by {rate:.2f}, times {scale:.2f} for the CPU a sample takes at one a "
        f"second against {max(cpu)}); budget 2 %: "
        f"{'met' if high <= 2.0 else 'not shown'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=24, help="seconds per drill")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=3, help="telemetry on/off pairs")
    parser.add_argument("--load-duration", type=int, default=15, help="seconds per load")
    parser.add_argument("--keep", type=Path, help="keep the project and its runs here")
    parser.add_argument("--cpu-window", type=int, default=30, help="seconds per CPU window")
    parser.add_argument(
        "--telemetry-only", action="store_true", help="skip the drills: only the telemetry cost"
    )
    parser.add_argument(
        "--in-run", type=int, default=0, help="seconds of one load with telemetry alternating"
    )
    parser.add_argument("--block", type=int, default=6, help="seconds per block of --in-run")
    parser.add_argument(
        "--rate",
        type=int,
        default=1,
        help="samples a second in --in-run's sampled blocks (and a second CPU accounting): "
        "a cost R times as large, measurable against the run's noise",
    )
    args = parser.parse_args()
    with stack(args.keep) as project:
        out = project / "bench-runs"
        cli(project, "replicate", "--replicas", "1", "--sync")
        in_run = telemetry_cost_in_run(project, out, args) if args.in_run else None
        if not args.telemetry_only:
            show("primary-failover, --sync", drill(project, out / "sync", args, "primary-failover"))
            cli(project, "replicate", "--async")
            show("primary-failover, async", drill(project, out / "async", args, "primary-failover"))
            show("replica-crash", drill(project, out / "replica", args, "replica-crash"))
        cpu = telemetry_cost(project, out, args)
        if in_run is not None and args.rate > 1:
            verdict(in_run, cpu)


if __name__ == "__main__":
    main()
