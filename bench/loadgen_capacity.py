"""Load-generator capacity on this machine, measured in one run.

1. requests/s of ``wrk`` against nginx's static 200 (the ceiling for this box);
2. requests/s of ``taskscale loadtest`` against the same URL with all CPU cores as Locust
   processes, and with one;
3. the cost of recording one request into the HDR histograms (``Recorder.record``) against
   Locust's per-request budget.

Every run is short and bounded (seconds); nginx is stopped at the end whatever happens.

    python bench/loadgen_capacity.py [--seconds 6] [--users 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from taskscale import proc  # noqa: E402
from taskscale.loadgen.metrics import Recorder  # noqa: E402
from tests.integration.loadtest_servers import StaticNginx  # noqa: E402

SCENARIO = """\
from locust import FastHttpUser, constant, task


class Hammer(FastHttpUser):
    wait_time = constant(0)

    @task
    def get(self) -> None:
        self.client.get("/")
"""


def wrk(url: str, seconds: int, connections: int) -> float:
    wrk_bin = shutil.which("wrk")
    if wrk_bin is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    threads = os.cpu_count() or 1
    out = proc.run(
        [wrk_bin, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", url],
        timeout=seconds + 30,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise SystemExit(f"cannot parse wrk output:\n{out}")
    return float(match.group(1))


def taskscale_loadtest(
    url: str, scenario: Path, out: Path, seconds: int, users: int, processes: int
) -> dict[str, Any]:
    proc.run(
        [
            sys.executable,
            "-m",
            "taskscale",
            "loadtest",
            "--host",
            url,
            "--scenario",
            str(scenario),
            "--users",
            str(users),
            "--spawn-rate",
            str(users),
            "--duration",
            f"{seconds}s",
            "--processes",
            str(processes),
            "--out",
            str(out),
        ],
        timeout=seconds + 120,
    )
    data: dict[str, Any] = json.loads((out / "report.json").read_text())
    return data


def hdr_overhead(n: int = 200_000) -> tuple[float, float]:
    """Microseconds per ``Recorder.record`` call, plain and with CO correction."""
    results = []
    for interval in (0, 10_000):
        recorder = Recorder(expected_interval_us=interval)
        now = time.time()
        start = time.perf_counter()
        for i in range(n):
            ms = 0.5 + (i % 97) * 0.1
            recorder.record(
                "GET",
                "/",
                ms,
                failed=False,
                answered=True,
                start_time=now,
                end_time=now + i * 1e-5,
                users=10,
            )
        results.append((time.perf_counter() - start) / n * 1e6)
    return results[0], results[1]


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    wrk_rps: list[float] = []
    runs: dict[int, list[dict[str, Any]]] = {cpus: [], 1: []}
    with tempfile.TemporaryDirectory(prefix="loadgen-bench-") as tmp:
        root = Path(tmp)
        scenario = root / "hammer.py"
        scenario.write_text(SCENARIO)
        with StaticNginx(root / "nginx", workers=1) as nginx:
            # Interleaved rounds, so background noise hits every generator alike.
            for round_no in range(args.rounds):
                wrk_rps.append(wrk(nginx.url + "/", args.seconds, args.users))
                for processes in runs:
                    out = root / f"run-{processes}-{round_no}"
                    runs[processes].append(
                        taskscale_loadtest(
                            nginx.url, scenario, out, args.seconds, args.users, processes
                        )
                    )
    per_call, per_call_co = hdr_overhead()
    load_after = os.getloadavg()[0]
    if load_before > 0.5:
        print(
            f"WARNING: load average was {load_before:.2f} before the run: other work on this "
            "machine skews these numbers"
        )
    print(
        f"machine: {cpus} CPUs; nginx 1 worker, static 200; {args.rounds} interleaved rounds of "
        f"{args.seconds}s runs, {args.users} connections/users; load average before/after "
        f"{load_before:.2f}/{load_after:.2f}"
    )
    base = _median(wrk_rps)
    print(f"{'generator':34} {'median req/s':>12} {'vs wrk':>7} {'p99 ms':>7}  rounds / saturated")
    rounds = ", ".join(f"{v:.0f}" for v in wrk_rps)
    wrk_label = f"wrk -t{cpus} -c{args.users}"
    print(f"{wrk_label:34} {base:>12.0f} {1:>7.2f} {'':>7}  {rounds}")
    for processes, reports in runs.items():
        rps = [float(r["total"]["rps"]) for r in reports]
        p99 = _median([float(r["total"]["latency_ms"]["p99"]) for r in reports])
        saturated = [bool(r["generator"]["saturated"]) for r in reports]
        label = f"taskscale loadtest --processes {processes}"
        rounds = ", ".join(f"{v:.0f}" for v in rps)
        print(
            f"{label:34} {_median(rps):>12.0f} {_median(rps) / base:>7.2f} {p99:>7.2f}  "
            f"{rounds} / {saturated}"
        )
    # Locust's own CPU cost per request: the single process's CPU time over its requests.
    single = runs[1]
    cost_us = _median(
        [
            _median(r["generator"]["busiest_process_samples"][2:-1])
            / 100
            * 1e6
            / float(r["total"]["rps"])
            for r in single
        ]
    )
    print(
        f"HDR recording: {per_call:.2f} us/request ({per_call_co:.2f} us with CO correction); "
        f"Locust's CPU per request in one process: {cost_us:.0f} us, so recording adds "
        f"{per_call / cost_us * 100:.1f}%"
    )


if __name__ == "__main__":
    main()
