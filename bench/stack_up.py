"""Local target timings and throughput, measured in one run on this machine.

    python bench/stack_up.py [--runs 5] [--duration 10] [--keep DIR]
                             [--baseline-src DIR [--ab-only]]

1. ``taskscale up --replicas 3`` to ready, warm (the PostgreSQL data dir exists), and ``down``:
   medians of ``--runs`` CLI invocations (the real command, interpreter start included).
2. Requests/s through nginx with 1 and with 2 replicas, and straight to one replica (nginx's
   overhead), with ``wrk`` (``apt-get install -y wrk``) on ``GET /healthz`` and on a cached
   ``GET /tasks/{id}``. Without wrk the script says so and skips part 2.

3. With ``--baseline-src DIR`` (the ``src`` directory of another checkout, e.g. ``git worktree
   add /tmp/base <commit>``): an A/B of warm ``up --replicas 3`` and ``down``, the baseline
   code (``PYTHONPATH=DIR``) against this one, alternating which goes first in each round, in
   the same run; and the CLI's bare start of both. ``--ab-only`` skips parts 1 and 2.

A fresh project is generated in a temporary directory with free loopback ports; everything is
stopped at the end, even on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from taskscale import proc
from taskscale.config import load_project
from taskscale.errors import CommandFailed
from taskscale.targets.local import LocalTarget
from taskscale.targets.local.ports import move_to_free_ports

CLI = "import sys; from taskscale.cli import main; sys.exit(main())"


def taskscale_output(
    *args: str, project: Path, timeout: float = 300, src: Path | None = None
) -> tuple[float, str]:
    """Run the real CLI in a fresh interpreter (``src``: the code of another checkout);
    return (wall seconds, stdout)."""
    env = {**os.environ, "PYTHONPATH": str(src)} if src is not None else None
    start = time.perf_counter()
    try:
        result = proc.run(
            [sys.executable, "-c", CLI, *args, "--project", str(project)],
            timeout=timeout,
            env=env,
        )
    except CommandFailed as exc:
        raise SystemExit(f"taskscale {' '.join(args)} failed: {exc}\n{exc.detail}") from exc
    return time.perf_counter() - start, result.stdout


def taskscale(*args: str, project: Path, timeout: float = 300, src: Path | None = None) -> float:
    """Run the real CLI; return its wall time in seconds."""
    return taskscale_output(*args, project=project, timeout=timeout, src=src)[0]


def cli_start(src: Path | None) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)} if src is not None else None
    start = time.perf_counter()
    proc.run([sys.executable, "-c", "from taskscale.cli import main"], timeout=60, env=env)
    return time.perf_counter() - start


def ab(project: Path, baseline: Path, runs: int) -> dict[str, object]:
    """Warm ``up --replicas 3`` / ``down`` and the CLI's start, baseline vs this code,
    alternating which goes first each round."""
    times: dict[str, dict[str, list[float]]] = {
        side: {"up": [], "down": [], "start": []} for side in ("baseline", "this")
    }
    sources = {"baseline": baseline, "this": None}
    taskscale("up", "--replicas", "3", project=project)  # warm: data dir and migrations
    taskscale("down", project=project)
    for round_ in range(runs):
        order = ["baseline", "this"] if round_ % 2 == 0 else ["this", "baseline"]
        for side in order:
            src = sources[side]
            times[side]["up"].append(taskscale("up", "--replicas", "3", project=project, src=src))
            times[side]["down"].append(taskscale("down", project=project, src=src))
            times[side]["start"].append(cli_start(src))
    summary: dict[str, object] = {}
    for side, measures in times.items():
        for measure, values in measures.items():
            median = statistics.median(values)
            summary[f"{side}_{measure}_median_s"] = round(median, 2)
            summary[f"{side}_{measure}_runs_s"] = [round(v, 2) for v in values]
            print(f"A/B {side:8} {measure:5}: median {median:.2f} s  runs "
                  f"{[round(v, 2) for v in values]}")  # fmt: skip
    return summary


@contextlib.contextmanager
def project_dir(keep: Path | None) -> Iterator[Path]:
    root = keep or Path(tempfile.mkdtemp(prefix="ts-bench-"))
    project = root / "bench"
    if not project.exists():
        from taskscale.cli import main

        if main(["new", "bench", "--output-dir", str(root), "--no-git"]) != 0:
            raise SystemExit("taskscale new failed")
        move_to_free_ports(project / "taskscale.toml")
    try:
        yield project
    finally:
        with contextlib.suppress(SystemExit):
            taskscale("down", project=project)
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


def api_url(project: Path) -> str:
    return f"http://127.0.0.1:{load_project(project).config.ports.api}"


def app_base(project: Path) -> int:
    return load_project(project).config.ports.app_base


def wrk(url: str, duration: int, connections: int = 64, threads: int = 2) -> float:
    out = proc.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", url],
        timeout=duration + 30,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise SystemExit(f"cannot parse wrk output for {url}:\n{out[-2000:]}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        print(f"  warning: {errors.group(1)} non-2xx responses from {url}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--keep", type=Path, help="reuse/keep a project under this directory")
    parser.add_argument("--baseline-src", type=Path, help="src/ of the code to compare with")
    parser.add_argument("--ab-only", action="store_true", help="only the A/B (part 3)")
    args = parser.parse_args()
    results: dict[str, object] = {"loadavg_before": [round(x, 2) for x in os.getloadavg()]}

    with project_dir(args.keep) as project:
        if args.baseline_src is not None:
            results["ab"] = ab(project, args.baseline_src.resolve(), args.runs)
            if args.ab_only:
                results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
                print(json.dumps(results, indent=2))
                return
        cold = taskscale("up", "--replicas", "3", project=project)
        taskscale("down", project=project)
        ups, downs = [], []
        for _ in range(args.runs):
            ups.append(taskscale("up", "--replicas", "3", project=project))
            downs.append(taskscale("down", project=project))
        results["cold_up_s"] = round(cold, 2)
        results["warm_up_3_replicas_median_s"] = round(statistics.median(ups), 2)
        results["warm_up_runs_s"] = [round(x, 2) for x in ups]
        results["down_median_s"] = round(statistics.median(downs), 2)
        results["down_runs_s"] = [round(x, 2) for x in downs]
        print(f"cold up (initdb + migrations): {cold:.2f} s")
        print(f"warm up --replicas 3: median {statistics.median(ups):.2f} s  runs {ups}")
        print(f"down:                 median {statistics.median(downs):.2f} s  runs {downs}")

        # The same through the library, in this process: the stack's own work, without the CLI's
        # interpreter start and imports.
        target = LocalTarget(load_project(project))
        lib_ups, lib_downs = [], []
        for _ in range(args.runs):
            start = time.perf_counter()
            target.up(3)
            lib_ups.append(time.perf_counter() - start)
            start = time.perf_counter()
            target.down()
            lib_downs.append(time.perf_counter() - start)
        results["library_up_3_median_s"] = round(statistics.median(lib_ups), 2)
        results["library_down_median_s"] = round(statistics.median(lib_downs), 2)
        print(f"library LocalTarget.up(3): median {statistics.median(lib_ups):.2f} s")
        print(f"library LocalTarget.down(): median {statistics.median(lib_downs):.2f} s")
        cli_start = []
        for _ in range(args.runs):
            start = time.perf_counter()
            proc.run([sys.executable, "-c", "from taskscale.cli import main"], timeout=60)
            cli_start.append(time.perf_counter() - start)
        results["cli_start_median_s"] = round(statistics.median(cli_start), 2)
        print(f"CLI start (python + imports): median {statistics.median(cli_start):.2f} s")

        scales: list[tuple[str, float]] = []
        taskscale("up", "--replicas", "3", project=project)
        for replicas in (5, 2):
            scales.append((f"scale {3 if replicas == 5 else 5} -> {replicas}", taskscale(
                "up", "--replicas", str(replicas), project=project)))  # fmt: skip
        results["scale_s"] = {name: round(t, 2) for name, t in scales}
        for name, t in scales:
            print(f"{name}: {t:.2f} s")

        if shutil.which("wrk") is None:
            print("wrk is missing (apt-get install -y wrk): throughput part skipped")
        else:
            api = api_url(project)
            direct = f"http://127.0.0.1:{app_base(project)}"
            with httpx.Client(trust_env=False) as client:
                task = client.post(f"{api}/tasks/", json={"title": "bench"}).json()
            paths = {"healthz": "/healthz", "cached_task": f"/tasks/{task['id']}"}
            throughput: dict[str, dict[str, float]] = {}
            for name, path in paths.items():
                row: dict[str, float] = {}
                for replicas in (1, 2):
                    taskscale("up", "--replicas", str(replicas), project=project)
                    wrk(api + path, 2)  # warm-up: caches, keep-alive pools
                    row[f"nginx_{replicas}_replicas"] = wrk(api + path, args.duration)
                row["direct_1_replica"] = wrk(direct + path, args.duration)
                row["ratio_2_vs_1"] = round(row["nginx_2_replicas"] / row["nginx_1_replicas"], 2)
                row["nginx_overhead_pct"] = round(
                    100 * (1 - row["nginx_1_replicas"] / row["direct_1_replica"]), 1
                )
                throughput[name] = row
                print(f"{name}: {row}")
            results["throughput_rps"] = throughput
    results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
