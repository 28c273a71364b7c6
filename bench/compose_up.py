"""Compose target timings and its throughput against the local target's, in one run.

    python bench/compose_up.py [--runs 5] [--cold-runs 1] [--duration 8] [--replicas 2]

1. ``taskscale up --target compose --replicas 3`` to ready (``--wait``: every healthcheck green):
   cold (no app image, no volumes: image build, initdb, migrations) and warm (image and volumes
   kept, containers removed by ``down``), plus ``down``; medians of the real CLI.
2. Requests/s through nginx with ``wrk`` on ``GET /healthz`` and a cached ``GET /tasks/{id}``:
   the compose stack, then the local target of the same project, with ``--replicas`` replicas
   each, so the ratio compares the two on the same machine in the same session.

Needs a Docker engine and Compose v2. Without registry access set the TASKSCALE_*_IMAGE
variables, or pass ``--standins`` to build and use the test suite's local stand-in images.
Everything is stopped and removed at the end, even on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
from stack_up import api_url, taskscale, wrk

from taskscale import proc
from taskscale.config import load_project
from taskscale.targets.compose import ComposeTarget
from taskscale.targets.local.ports import move_to_free_ports

STANDINS = Path(__file__).resolve().parents[1] / "tests" / "docker" / "standins" / "build.sh"


def use_standins() -> None:
    out = proc.run(["bash", str(STANDINS)], timeout=1800).stdout
    for line in out.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        os.environ[key] = value
        print(f"{key}={value}")


@contextlib.contextmanager
def bench_project() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="ts-compose-bench-"))
    from taskscale.cli import main

    # The open API: infrastructure timings, comparable with the runs before --auth existed.
    new = ["new", "cbench", "--broker", "redis", "--output-dir", str(root), "--no-git"]
    if main([*new, "--auth", "none"]) != 0:
        raise SystemExit("taskscale new failed")
    project = root / "cbench"
    move_to_free_ports(project / "taskscale.toml")
    try:
        yield project
    finally:
        for target in ("compose", "local"):
            with contextlib.suppress(SystemExit):
                taskscale("down", "--purge", "--target", target, project=project)
        shutil.rmtree(root, ignore_errors=True)


def throughput(project: Path, duration: int) -> dict[str, float]:
    api = api_url(project)
    with httpx.Client(trust_env=False, timeout=10) as client:
        task = client.post(f"{api}/tasks/", json={"title": "bench"}).json()
    row: dict[str, float] = {}
    for name, path in {"healthz": "/healthz", "cached_task": f"/tasks/{task['id']}"}.items():
        wrk(api + path, 2)  # warm-up: caches, pools
        row[name] = wrk(api + path, duration)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cold-runs", type=int, default=1)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--replicas", type=int, default=2, help="replicas for the rps part")
    parser.add_argument("--standins", action="store_true", help="build and use local images")
    args = parser.parse_args()
    if args.standins:
        use_standins()
    results: dict[str, object] = {"loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    compose = ["--target", "compose"]
    with bench_project() as project:
        target = ComposeTarget(load_project(project))
        colds = []
        for _ in range(args.cold_runs):
            taskscale("down", "--purge", *compose, project=project)
            with contextlib.suppress(Exception):
                target.client.images.remove(target.image, force=True)
            colds.append(taskscale("up", *compose, "--replicas", "3", project=project))
        ups, downs = [], []
        for _ in range(args.runs):
            downs.append(taskscale("down", *compose, project=project))
            ups.append(taskscale("up", *compose, "--replicas", "3", project=project))
        results["cold_up_3_s"] = [round(x, 2) for x in colds]
        results["warm_up_3_median_s"] = round(statistics.median(ups), 2)
        results["warm_up_runs_s"] = [round(x, 2) for x in ups]
        results["down_median_s"] = round(statistics.median(downs), 2)
        print(f"cold up --target compose --replicas 3: {colds}")
        print(f"warm up: median {statistics.median(ups):.2f} s  runs {ups}")
        print(f"down:    median {statistics.median(downs):.2f} s  runs {downs}")

        if shutil.which("wrk") is None:
            print("wrk is missing (apt-get install -y wrk): throughput part skipped")
        else:
            n = str(args.replicas)
            taskscale("up", *compose, "--replicas", n, project=project)
            rps_compose = throughput(project, args.duration)
            taskscale("down", *compose, project=project)
            taskscale("up", "--target", "local", "--replicas", n, project=project)
            rps_local = throughput(project, args.duration)
            taskscale("down", "--target", "local", project=project)
            ratio = {k: round(rps_compose[k] / rps_local[k], 2) for k in rps_compose}
            results["throughput_rps"] = {
                "replicas": args.replicas,
                "compose": rps_compose,
                "local": rps_local,
                "compose_vs_local": ratio,
            }
            print(f"rps with {n} replicas: compose {rps_compose}  local {rps_local}  ratio {ratio}")
    results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
