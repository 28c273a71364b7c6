"""Local restart policy: how fast the stack's supervisor brings each kind of service back.

    python bench/restart.py [--runs 5] [--keep DIR]

A fresh `--broker kafka` project (so every kind of service is there) runs with 3 replicas on
free loopback ports; its restart window is set to 2 s and runs are 2.5 s apart, so every kill
is a first restart (no back-off): what a single crash costs.

1. Replica: while a client loops ``GET /healthz`` through nginx, ``app-2`` is SIGKILLed.
   Printed: kill -> the new process answers ``/readyz`` on its port, and kill -> the first
   request through nginx answered by app-2 again ("back behind nginx", the issue's <= 2 s),
   and the requests that failed meanwhile (nginx retries refused GETs on another replica).
   Then again under load: ``--load-procs`` (default 2) processes loop ``GET /tasks/?limit=5``
   through nginx meanwhile (the 2 cores busy with nginx, the replicas and PostgreSQL); their
   request and failure counts are printed.
2. The same replica restarted from a fresh interpreter instead of the supervisor's zygote
   (supervisor stopped, ``Supervisor.spawn``), for the ratio the zygote buys.
3. Every other kind (worker, nginx, Redis, Kafka, PostgreSQL): kill -> ready (port
   listening; worker: alive); nginx also kill -> the next 200 through it.
4. The supervisor's own CPU: idle for 10 s, and during 10 s of the client loop.

Medians of ``--runs`` kills each. Everything is stopped at the end, even on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from taskscale import proc
from taskscale.config import load_project
from taskscale.scaffold import NewProjectSpec, create_project
from taskscale.targets.local import LocalTarget
from taskscale.targets.local.keeper import service_ready
from taskscale.targets.local.ports import move_to_free_ports
from taskscale.targets.local.probes import status as probe
from taskscale.targets.local.state import ServiceRecord

BETWEEN_RUNS = 2.5  # longer than the bench project's restart window: no back-off
TIMEOUT = 30.0
# A load process: GET a path through nginx in a loop for some seconds (bounded in count too).
LOAD = r"""
import os, sys, time, httpx
api, path, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
sent = failed = 0
deadline = time.monotonic() + seconds
headers = {"Authorization": os.environ["BENCH_AUTH"]} if os.environ.get("BENCH_AUTH") else {}
with httpx.Client(base_url=api, timeout=5, trust_env=False, headers=headers) as client:
    while time.monotonic() < deadline and sent < 5_000_000:
        sent += 1
        try:
            if client.get(path).status_code != 200:
                failed += 1
        except httpx.HTTPError:
            failed += 1
print(sent, failed)
"""


def bearer(api: str) -> str:
    """``Bearer <token>`` of a bench user, or "" for an API without auth (``--auth none``)."""
    account = {"email": "restart-bench@example.com", "password": "restart bench password"}
    with httpx.Client(base_url=api, timeout=30, trust_env=False) as client:
        if client.get("/tasks/", params={"limit": 1}).status_code != 401:
            return ""
        client.post("/auth/register", json=account)  # 201, or 409 when it exists
        form = {"username": account["email"], "password": account["password"]}
        response = client.post("/auth/token", data=form)
        response.raise_for_status()
        return f"Bearer {response.json()['access_token']}"


@contextlib.contextmanager
def loaded(api: str, processes: int, seconds: float) -> Iterator[list[tuple[int, int]]]:
    """``processes`` load processes for ``seconds``; the list gets (sent, failed) of each."""
    argv = [sys.executable, "-c", LOAD, api, "/tasks/?limit=5", str(seconds)]
    env = {**os.environ, "BENCH_AUTH": bearer(api)}
    started = [proc.start(argv, timeout=seconds + 60, env=env) for _ in range(processes)]
    counts: list[tuple[int, int]] = []
    try:
        yield counts
    finally:
        for one in started:
            result = one.finish("", check=False)
            sent, failed = (int(x) for x in (result.stdout.split() or ["0", "0"])[:2])
            counts.append((sent, failed))


@dataclass
class Loop:
    """A client looping GET /healthz through nginx (bounded in time and count)."""

    api: str
    answers: list[tuple[float, float, str]] = field(default_factory=list)  # sent, got, instance
    failures: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        deadline = time.monotonic() + 600
        with httpx.Client(base_url=self.api, timeout=5, trust_env=False) as client:
            for _ in range(2_000_000):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                sent = time.monotonic()
                try:
                    response = client.get("/healthz")
                except httpx.HTTPError:
                    self.failures.append(sent)
                    continue
                if response.status_code != 200:
                    self.failures.append(sent)
                    continue
                got = time.monotonic()
                self.answers.append((sent, got, response.headers.get("x-instance-id", "")))


@contextlib.contextmanager
def looping(api: str) -> Iterator[Loop]:
    loop = Loop(api)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.stop.set()
        thread.join(timeout=10)


def find(target: LocalTarget, name: str) -> ServiceRecord | None:
    return target.supervisor.record_of(name)


def record(target: LocalTarget, name: str) -> ServiceRecord:
    found = find(target, name)
    if found is None:
        raise SystemExit(f"{name} is not recorded")
    return found


def wait_back(target: LocalTarget, name: str, old_pid: int) -> tuple[ServiceRecord, float]:
    """Poll (every 5 ms) until ``name`` runs under a new pid and is ready; (record, time).
    (For an instant during a restart the state may not name it at all.)"""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        current = find(target, name)
        if (
            current is not None
            and current.pid != old_pid
            and current.alive()
            and service_ready(current)
        ):
            return current, time.monotonic()
        time.sleep(0.005)
    raise SystemExit(f"{name} did not come back within {TIMEOUT:g}s")


def kill(pid: int) -> float:
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


def replica_runs(target: LocalTarget, api: str, instance: str, runs: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"ready": [], "behind_nginx": [], "failed_requests": []}
    with looping(api) as loop:
        time.sleep(1.0)
        for _ in range(runs):
            old = record(target, "app-2").pid
            killed_at = kill(old)
            _, ready_at = wait_back(target, "app-2", old)
            out["ready"].append(ready_at - killed_at)
            deadline = time.monotonic() + TIMEOUT
            behind = None
            while behind is None and time.monotonic() < deadline:
                behind = next(
                    (
                        got
                        for sent, got, who in loop.answers
                        if sent > killed_at and who == instance
                    ),
                    None,
                )
                time.sleep(0.005)
            if behind is None:
                raise SystemExit("app-2 got no request through nginx")
            out["behind_nginx"].append(behind - killed_at)
            out["failed_requests"].append(float(sum(1 for f in loop.failures if f > killed_at)))
            time.sleep(BETWEEN_RUNS)
    return out


def replica_ready(port: int) -> Callable[[], bool]:
    return lambda: probe(port, "/readyz", 1.0) == 200


def fresh_interpreter_runs(target: LocalTarget, runs: int) -> list[float]:
    """app-2 killed and started again by a plain spawn (no zygote), supervisor stopped."""
    supervisor = record(target, "supervisor")
    proc.terminate(supervisor.pid, timeout=10)
    times = []
    for _ in range(runs):
        old = record(target, "app-2")
        spec = target.supervisor.spec(old)
        if spec is None:
            raise SystemExit("no spec recorded for app-2")
        killed_at = kill(old.pid)
        proc.wait_for_exit(old.pid, 5)
        with target.supervisor.session() as run:
            run.forget([old])
            new = target.supervisor.spawn(run, spec)
        if not proc.poll_until(replica_ready(new.port or 0), TIMEOUT, 0.005, 0.005):
            raise SystemExit("app-2 (fresh interpreter) did not become ready")
        times.append(time.monotonic() - killed_at)
        time.sleep(BETWEEN_RUNS)
    return times


def kind_runs(target: LocalTarget, api: str, name: str, runs: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"ready": [], "first_200": []}
    for _ in range(runs):
        old = record(target, name)
        killed_at = kill(old.pid)
        _, ready_at = wait_back(target, name, old.pid)
        out["ready"].append(ready_at - killed_at)
        if name == "nginx":
            ok = proc.poll_until(
                lambda: probe(int(api.rsplit(":", 1)[1]), "/healthz", 1.0) == 200,
                TIMEOUT,
                0.005,
                0.005,
            )
            if not ok:
                raise SystemExit("nothing answered through nginx")
            out["first_200"].append(time.monotonic() - killed_at)
        time.sleep(BETWEEN_RUNS)
    return out


def cpu_seconds(pid: int, seconds: float) -> float:
    """CPU time of ``pid`` over ``seconds`` (its threads included), in seconds, from the
    scheduler's nanosecond counter (psutil's cpu_times count 10 ms ticks)."""

    def on_cpu() -> int:
        total = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
        return total

    before = on_cpu()
    time.sleep(seconds)
    return (on_cpu() - before) / 1e9


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.3f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="generate the project here and keep it")
    parser.add_argument("--load-procs", type=int, default=2)
    options = parser.parse_args()
    root = options.keep or Path(tempfile.mkdtemp(prefix="ts-restart-"))
    project = create_project(
        NewProjectSpec(name="rbench", output_dir=root, broker="kafka", git=False)
    ).path
    ports = move_to_free_ports(project / "taskscale.toml")
    config = project / "taskscale.toml"
    config.write_text(config.read_text().replace("window_seconds = 60.0", "window_seconds = 2.0"))
    api = f"http://127.0.0.1:{ports['api']}"
    target = LocalTarget(load_project(project))
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; project {project}")
    try:
        target.up(3)
        time.sleep(3)  # the supervisor's zygote imports the app's libraries
        supervisor = record(target, "supervisor").pid
        idle = cpu_seconds(supervisor, 10)
        with looping(api):
            busy = cpu_seconds(supervisor, 10)
        print(
            f"supervisor CPU: {idle * 1000:.1f} ms in 10 s idle, {busy * 1000:.1f} ms in 10 s "
            "under the client loop"
        )

        replica = replica_runs(target, api, "rbench-app-2", options.runs)
        print(
            f"replica app-2 SIGKILL -> /readyz: median {median(replica['ready'])} s "
            f"runs {[round(x, 3) for x in replica['ready']]}"
        )
        print(
            f"replica app-2 SIGKILL -> back behind nginx: median "
            f"{median(replica['behind_nginx'])} s runs "
            f"{[round(x, 3) for x in replica['behind_nginx']]} (issue: <= 2 s); failed GETs "
            f"meanwhile {[int(x) for x in replica['failed_requests']]}"
        )
        seconds = options.runs * (BETWEEN_RUNS + 1.5) + 3
        with loaded(api, options.load_procs, seconds) as counts:
            time.sleep(2.0)  # the load settles
            under = replica_runs(target, api, "rbench-app-2", options.runs)
        print(
            f"under load ({options.load_procs} processes, load average "
            f"{os.getloadavg()[0]:.2f}): /readyz median {median(under['ready'])} s "
            f"runs {[round(x, 3) for x in under['ready']]}; back behind nginx median "
            f"{median(under['behind_nginx'])} s runs {[round(x, 3) for x in under['behind_nginx']]}"
        )
        print(
            f"  load requests sent/failed per process: {counts} (failed GETs of the probe "
            f"client: {[int(x) for x in under['failed_requests']]})"
        )
        for name in ("worker", "nginx", "redis", "kafka", "postgres"):
            result = kind_runs(target, api, name, options.runs)
            extra = (
                f"; first 200 through it: median {median(result['first_200'])} s"
                if result["first_200"]
                else ""
            )
            print(
                f"{name:8} SIGKILL -> ready: median {median(result['ready'])} s "
                f"runs {[round(x, 3) for x in result['ready']]}{extra}"
            )

        fresh = fresh_interpreter_runs(target, options.runs)
        zygote = statistics.median(replica["ready"])
        print(
            f"replica from a fresh interpreter (no zygote) -> /readyz: median "
            f"{statistics.median(fresh):.3f} s runs {[round(x, 3) for x in fresh]}; "
            f"the zygote is {statistics.median(fresh) / zygote:.1f}x faster"
        )
    finally:
        with contextlib.suppress(Exception):
            target.down()
        if options.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
