"""PostgreSQL streaming replication on the local target (issue 5), measured in one run.

    python bench/replication.py [--runs 3] [--lag-seconds 10] [--writes 300] [--keep DIR]

On a real local stack (``taskscale up --replicas 2``: 2 app replicas behind nginx):

1. ``taskscale replicate --replicas 2`` to both standbys ``streaming`` in ``pg_stat_replication``
   on the primary (polled every ~20 ms in-process while the CLI runs), median of ``--runs``;
   between runs ``replicate --replicas 0``. The command's own wall time is printed too.
2. Replication lag under a write load: a writer thread inserts 10-row batches into ``tasks``
   straight into the primary (psycopg, autocommit, as fast as it goes) for ``--lag-seconds``
   while a sampler inserts a marker row on the primary and polls both standbys (every 0.5 ms)
   until the row is visible there: commit acknowledged on the primary -> row visible on the
   standby, p50/p99/max and count (plus the largest ``replay_lag`` pg_stat_replication showed,
   sampled every 0.5 s).
3. Write latency, async vs ``--sync`` (ANY 1), in the same run: a single-row INSERT commit on
   the primary through psycopg, and ``POST /tasks/`` through nginx, ``--writes`` each, sequential.
4. Failover: with ``POST /tasks/`` writers in flight (2 threads through nginx), SIGKILL of the
   primary postmaster, then ``taskscale replicate failover``; from the kill to the first
   successful POST that started after the kill. Done twice: with ``--sync`` (and every
   acknowledged write checked on the new primary), then, after ``replicate rejoin`` of the old
   primary, with ``--async``.

A fresh project is generated in a temporary directory with free loopback ports; everything is
stopped and purged at the end, even on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
from stack_up import taskscale_output

from taskscale import proc
from taskscale.config import load_project, read_env_file
from taskscale.errors import TaskscaleError
from taskscale.targets.local import LocalTarget
from taskscale.targets.local.ports import move_to_free_ports
from taskscale.targets.local.state import StateFile
from taskscale.targets.local.topology import Topology

Conn = psycopg.Connection[tuple[Any, ...]]

TARGETS = {
    "streaming_s": 5.0,
    "lag_p99_ms": 100.0,
    "failover_s": 5.0,
}


def set_ports(project: Path) -> dict[str, int]:
    return move_to_free_ports(project / "taskscale.toml")


class Stack:
    """The generated project, its credentials, and every pid it ever recorded."""

    def __init__(self, project: Path) -> None:
        self.project = project
        loaded = load_project(project)
        self.state_dir = loaded.state_dir
        self.ports = loaded.config.ports
        self.seen_pids: set[int] = set()

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports.api}"

    def remember_pids(self) -> None:
        with contextlib.suppress(TaskscaleError):  # a corrupt state file: nothing to remember
            services = StateFile(self.state_dir).load().services.values()
            self.seen_pids.update(s.pid for s in services)

    def cli(self, *args: str, timeout: float = 180) -> tuple[float, str]:
        try:
            return taskscale_output(*args, project=self.project, timeout=timeout)
        finally:
            self.remember_pids()

    def cli_json(self, *args: str, timeout: float = 180) -> tuple[float, dict[str, Any]]:
        seconds, out = self.cli(*args, "--json", timeout=timeout)
        data: dict[str, Any] = json.loads(out)
        return seconds, data

    def connect(self, port: int, timeout: int = 2) -> Conn:
        env = read_env_file(self.project / ".env")
        return psycopg.connect(
            host="127.0.0.1",
            port=port,
            user=env["POSTGRES_USER"],
            password=env["POSTGRES_PASSWORD"],
            dbname=env["POSTGRES_DB"],
            autocommit=True,
            connect_timeout=timeout,
        )

    def status(self) -> dict[str, Any]:
        return self.cli_json("replicate", "status")[1]

    def primary_port(self) -> int:
        status = self.status()
        node = next(n for n in status["nodes"] if n["name"] == status["primary"])
        return int(node["port"])

    def standby_ports(self) -> dict[str, int]:
        return {
            n["name"]: int(n["port"])
            for n in self.status()["nodes"]
            if n["role"] == "standby" and n["state"] != "detached"
        }

    def kill_leftovers(self) -> list[int]:
        """SIGKILL what is still alive among the pids we saw (only processes of this project)."""
        killed = []
        root = str(self.project.parent)
        for pid in sorted(self.seen_pids):
            try:
                process = psutil.Process(pid)
                if root not in " ".join(process.cmdline()):
                    continue
                for child in process.children(recursive=True):
                    child.kill()
                process.kill()
                killed.append(pid)
            except psutil.Error:
                pass
        return killed


@contextlib.contextmanager
def running_stack(keep: Path | None) -> Iterator[Stack]:
    root = keep or Path(tempfile.mkdtemp(prefix="ts-bench-repl-"))
    project = root / "benchrepl"
    if not project.exists():
        from taskscale.cli import main

        # The open API: these are database timings, comparable with the runs before --auth
        # existed (the cost of authentication is measured in app_throughput.py).
        new = ["new", "benchrepl", "--output-dir", str(root), "--no-git", "--auth", "none"]
        if main(new) != 0:
            if keep is None:
                shutil.rmtree(root, ignore_errors=True)
            raise SystemExit("taskscale new failed")
        set_ports(project)
    stack = Stack(project)
    try:
        yield stack
    finally:
        stack.remember_pids()
        with contextlib.suppress(SystemExit):
            stack.cli("down", "--purge", timeout=120)
        killed = stack.kill_leftovers()
        if killed:
            print(f"killed leftover pids after down: {killed}")
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def streaming_standbys(target: LocalTarget) -> int:
    """Standbys ``streaming`` in pg_stat_replication (read as the superuser: the app role sees
    NULL states there), through the library in this process, so it can be polled often."""
    try:
        status = target.replication().status()
    except TaskscaleError:
        return 0
    return sum(1 for n in status.standbys if n.state == "streaming")


# ---------------------------------------------------------------------------------------- 1


def measure_streaming(stack: Stack, runs: int) -> dict[str, Any]:
    to_stream: list[float] = []
    command: list[float] = []
    library: list[float] = []
    removal: list[float] = []
    target = LocalTarget(load_project(stack.project))
    for run in range(runs):
        outcome: dict[str, Any] = {}

        def replicate(box: dict[str, Any] = outcome) -> None:
            try:
                box["result"] = stack.cli_json("replicate", "--replicas", "2")
            except BaseException as exc:  # reported by the main thread
                box["error"] = exc

        if streaming_standbys(target) != 0:
            raise SystemExit("standbys already streaming before the run")
        thread = threading.Thread(target=replicate, daemon=True)
        start = time.perf_counter()
        thread.start()
        streamed = proc.poll_until(
            lambda: streaming_standbys(target) >= 2, 60, interval=0.02, max_interval=0.02
        )
        elapsed = time.perf_counter() - start
        thread.join(timeout=180)
        if thread.is_alive() or "error" in outcome:
            raise SystemExit(f"replicate --replicas 2 failed: {outcome.get('error')}")
        if not streamed:
            raise SystemExit("the standbys were not streaming 60 s after replicate --replicas 2")
        seconds, data = outcome["result"]
        to_stream.append(elapsed)
        command.append(seconds)
        library.append(float(data["seconds"]))
        print(f"run {run + 1}: both streaming after {elapsed:.2f} s; command {seconds:.2f} s "
              f"(in-library {data['seconds']:.2f} s)")  # fmt: skip
        if run < runs - 1:
            removal.append(stack.cli("replicate", "--replicas", "0")[0])
    return {
        "to_streaming_median_s": round(statistics.median(to_stream), 2),
        "to_streaming_runs_s": [round(x, 2) for x in to_stream],
        "command_median_s": round(statistics.median(command), 2),
        "command_runs_s": [round(x, 2) for x in command],
        "in_library_median_s": round(statistics.median(library), 2),
        "remove_replicas_0_runs_s": [round(x, 2) for x in removal],
    }


# ---------------------------------------------------------------------------------------- 2


def measure_lag(stack: Stack, seconds: float) -> dict[str, Any]:
    primary_port = stack.primary_port()
    standby_ports = stack.standby_ports()
    target = LocalTarget(load_project(stack.project))
    stop = threading.Event()
    written = {"commits": 0, "rows": 0}
    writer_seconds = [0.0]  # the writer's own running time, from its first INSERT to its last
    errors: list[str] = []

    def writer() -> None:
        try:
            with stack.connect(primary_port) as conn:
                deadline = time.monotonic() + seconds + 30
                started = time.perf_counter()
                try:
                    while not stop.is_set() and time.monotonic() < deadline:
                        conn.execute(
                            "INSERT INTO tasks (title, description) "
                            "SELECT 'bench-load', repeat('x', 200) FROM generate_series(1, 10)"
                        )
                        written["commits"] += 1
                        written["rows"] += 10
                finally:
                    writer_seconds[0] = time.perf_counter() - started
        except psycopg.Error as exc:
            errors.append(f"writer: {exc}")

    delays: dict[str, list[float]] = {name: [] for name in standby_ports}
    replay_lag_max = 0.0
    timeouts = 0
    with contextlib.ExitStack() as stack_cm:
        primary = stack_cm.enter_context(stack.connect(primary_port))
        standbys = {n: stack_cm.enter_context(stack.connect(p)) for n, p in standby_ports.items()}
        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        # The load is on before the first sample.
        if not proc.poll_until(lambda: written["commits"] >= 20 or bool(errors), 10) or errors:
            stop.set()
            raise SystemExit(f"the writer did not get going: {'; '.join(errors) or 'too slow'}")
        end = time.monotonic() + seconds
        next_lag_probe = 0.0
        samples = 0
        while time.monotonic() < end and samples < 5000:
            samples += 1
            row = primary.execute(
                "INSERT INTO tasks (title) VALUES ('bench-marker') RETURNING id"
            ).fetchone()
            committed = time.perf_counter()
            assert row is not None
            marker = int(row[0])
            pending = dict(standbys)
            limit = committed + 5.0
            while pending and time.perf_counter() < limit:
                for name, conn in list(pending.items()):
                    if conn.execute("SELECT 1 FROM tasks WHERE id = %s", (marker,)).fetchone():
                        delays[name].append(time.perf_counter() - committed)
                        del pending[name]
                if pending:
                    time.sleep(0.0005)
            timeouts += len(pending)
            if time.monotonic() >= next_lag_probe:
                next_lag_probe = time.monotonic() + 0.5
                for node in target.replication().status().standbys:
                    replay_lag_max = max(replay_lag_max, node.lag_seconds or 0.0)
            time.sleep(0.01)
        # `taskscale replicate status` under load: what an operator sees.
        status_lag = {
            n["name"]: n["lag_seconds"] for n in stack.status()["nodes"] if n["role"] == "standby"
        }
        stop.set()
        thread.join(timeout=10)
    if errors:
        raise SystemExit("; ".join(errors))
    every = [d for values in delays.values() for d in values]
    result: dict[str, Any] = {
        "samples": len(every),
        "not_visible_in_5s": timeouts,
        "p50_ms": round(pct(every, 50) * 1000, 2),
        "p99_ms": round(pct(every, 99) * 1000, 2),
        "max_ms": round(max(every, default=float("nan")) * 1000, 2),
        "per_standby": {
            name: {
                "count": len(values),
                "p50_ms": round(pct(values, 50) * 1000, 2),
                "p99_ms": round(pct(values, 99) * 1000, 2),
                "max_ms": round(max(values) * 1000, 2),
            }
            for name, values in delays.items()
            if values
        },
        "writer_commits_per_s": (
            round(written["commits"] / writer_seconds[0]) if writer_seconds[0] else None
        ),
        "writer_rows": written["rows"],
        "replay_lag_max_ms": round(replay_lag_max * 1000, 2),
        "status_lag_seconds_under_load": status_lag,
    }
    print(f"lag: {result}")
    return result


# ---------------------------------------------------------------------------------------- 3


def measure_write_latency(stack: Stack, writes: int) -> dict[str, float]:
    primary_port = stack.primary_port()
    sql_ms: list[float] = []
    api_ms: list[float] = []
    with stack.connect(primary_port) as conn:
        for i in range(writes + 20):
            start = time.perf_counter()
            conn.execute("INSERT INTO tasks (title) VALUES ('bench-latency')")
            if i >= 20:
                sql_ms.append((time.perf_counter() - start) * 1000)
    with httpx.Client(trust_env=False, timeout=10) as client:
        for i in range(writes + 20):
            start = time.perf_counter()
            response = client.post(f"{stack.api}/tasks/", json={"title": "bench-latency"})
            if response.status_code != 201:
                raise SystemExit(f"POST /tasks/ answered {response.status_code}")
            if i >= 20:
                api_ms.append((time.perf_counter() - start) * 1000)
    return {
        "insert_p50_ms": round(pct(sql_ms, 50), 2),
        "insert_p99_ms": round(pct(sql_ms, 99), 2),
        "post_p50_ms": round(pct(api_ms, 50), 2),
        "post_p99_ms": round(pct(api_ms, 99), 2),
    }


def sync_states(stack: Stack) -> list[str]:
    return sorted(str(n["sync_state"]) for n in stack.status()["nodes"] if n["role"] == "standby")


# ---------------------------------------------------------------------------------------- 4


@dataclass
class Post:
    start: float
    end: float
    ok: bool
    task_id: int | None = None
    error: str = ""


@dataclass
class Writers:
    """POST /tasks/ in a loop from a few threads until stopped (or a hard deadline)."""

    api: str
    threads: int = 2
    posts: list[Post] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _loop(self) -> None:
        deadline = time.monotonic() + 120
        with httpx.Client(trust_env=False, timeout=3) as client:
            while not self.stop.is_set() and time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    response = client.post(f"{self.api}/tasks/", json={"title": "bench-failover"})
                    ok = response.status_code == 201
                    post = Post(start, time.perf_counter(), ok,
                                int(response.json()["id"]) if ok else None,
                                "" if ok else str(response.status_code))  # fmt: skip
                except httpx.HTTPError as exc:
                    post = Post(start, time.perf_counter(), False, error=type(exc).__name__)
                with self._lock:
                    self.posts.append(post)
                if not post.ok:
                    time.sleep(0.01)  # no hot loop on a fast failure (connection refused)

    def start(self) -> None:
        for _ in range(self.threads):
            thread = threading.Thread(target=self._loop, daemon=True)
            thread.start()
            self._threads.append(thread)

    def finish(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def snapshot(self) -> list[Post]:
        with self._lock:
            return list(self.posts)


def measure_failover(stack: Stack, label: str) -> dict[str, Any]:
    # The stack's supervisor would start the killed primary again within a second (same
    # data, same role: bench/restart.py); failover is for a primary that stays down.
    supervisor = StateFile(stack.state_dir).load().named("supervisor")
    if supervisor is not None:
        proc.terminate(supervisor.pid, timeout=10)
    primary = Topology.load(stack.state_dir).primary
    record = StateFile(stack.state_dir).load().services.get(primary)
    if record is None:
        raise SystemExit(f"the primary {primary} is not in the state file")
    pid = record.pid
    writers = Writers(stack.api)
    writers.start()
    try:
        # Steady writes before the kill.
        if not proc.poll_until(lambda: sum(p.ok for p in writers.snapshot()) >= 20, 10):
            raise SystemExit("fewer than 20 successful POSTs in 10 s before the kill")
        os.kill(pid, signal.SIGKILL)
        killed = time.perf_counter()
        try:
            command_s, change = stack.cli_json("replicate", "failover", timeout=120)
        finally:
            command_done = time.perf_counter()

        # A SIGKILLed postmaster's backends can still commit for a few milliseconds, so the
        # clock stops at the first successful POST that started after the first failed one
        # (the outage as clients see it), measured from the kill.
        def outage_start() -> float:
            failed = [p.end for p in writers.snapshot() if not p.ok and p.end >= killed]
            return min(failed) if failed else killed

        def recovered() -> list[Post]:
            since = outage_start()
            return [p for p in writers.snapshot() if p.ok and p.start >= since]

        first_ok: Post | None = None
        if proc.poll_until(lambda: bool(recovered()), 30):
            first_ok = min(recovered(), key=lambda p: p.end)
        time.sleep(1.0)  # and the app keeps serving after it
    finally:
        writers.finish()
    posts = writers.snapshot()
    after_kill = [p for p in posts if p.end >= killed]
    acked = [p.task_id for p in posts if p.ok and p.task_id is not None]
    new_primary = change["primary"]
    new_port = next(int(n["port"]) for n in change["nodes"] if n["name"] == new_primary)
    with stack.connect(new_port) as conn:
        row = conn.execute("SELECT count(*) FROM tasks WHERE id = ANY(%s)", (acked,)).fetchone()
    present = int(row[0]) if row else 0
    failures: dict[str, int] = {}
    for p in after_kill:
        if not p.ok:
            failures[p.error] = failures.get(p.error, 0) + 1
    last_ok_end = max((p.end for p in posts if p.ok and p.end >= killed), default=killed)
    result: dict[str, Any] = {
        "mode": label,
        "killed": f"{primary} (pid {pid})",
        "promoted": new_primary,
        "kill_to_first_post_s": round(first_ok.end - killed, 2) if first_ok else None,
        "failover_command_s": round(command_s, 2),
        "failover_in_library_s": float(change["seconds"]),
        "kill_to_command_done_s": round(command_done - killed, 2),
        "failed_posts_after_kill": failures,
        "ok_posts_after_kill": sum(1 for p in after_kill if p.ok),
        "acked_writes": len(acked),
        "acked_writes_missing_on_new_primary": len(acked) - present,
        "serving_until_s_after_kill": round(last_ok_end - killed, 2),
    }
    print(f"failover ({label}): {result}")
    return result


# ---------------------------------------------------------------------------------------- main


def verdict(value: float | None, target: float) -> str:
    if value is None:
        return "MISS (none)"
    return "PASS" if value <= target else "MISS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lag-seconds", type=float, default=10.0)
    parser.add_argument("--writes", type=int, default=300, help="sequential writes per mode")
    parser.add_argument("--keep", type=Path, help="reuse/keep a project under this directory")
    args = parser.parse_args()
    command = "python3 bench/replication.py " + " ".join(sys.argv[1:])
    sys.setswitchinterval(0.0005)  # threads' timestamps are not held up by the GIL for 5 ms
    began = time.perf_counter()
    results: dict[str, Any] = {
        "command": command.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    with running_stack(args.keep) as stack:
        seconds, _ = stack.cli("up", "--replicas", "2")
        print(f"up --replicas 2 (app replicas): {seconds:.2f} s")
        results["streaming"] = measure_streaming(stack, args.runs)
        results["lag_async"] = measure_lag(stack, args.lag_seconds)
        latency = {"async": measure_write_latency(stack, args.writes)}
        results["switch_to_sync_s"] = round(stack.cli("replicate", "--sync")[0], 2)
        results["sync_states"] = sync_states(stack)
        latency["sync"] = measure_write_latency(stack, args.writes)
        results["write_latency_ms"] = latency
        print(f"write latency: {latency} (sync_state: {results['sync_states']})")
        failovers = [measure_failover(stack, "sync")]
        old = failovers[0]["killed"].split()[0]
        results["rejoin_s"] = round(stack.cli("replicate", "rejoin", old)[0], 2)
        results["switch_to_async_s"] = round(stack.cli("replicate", "--async")[0], 2)
        failovers.append(measure_failover(stack, "async"))
        results["failover"] = failovers
    results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    results["total_s"] = round(time.perf_counter() - began, 1)

    s, lag = results["streaming"], results["lag_async"]
    rows = [
        ("replicate --replicas 2 -> both streaming, median", f"{s['to_streaming_median_s']} s",
         "<= 5 s", verdict(s["to_streaming_median_s"], TARGETS["streaming_s"])),
        ("  (command wall time, median)", f"{s['command_median_s']} s", "-", ""),
        (f"lag commit->visible, async, n={lag['samples']}: p50", f"{lag['p50_ms']} ms", "-", ""),
        ("  p99", f"{lag['p99_ms']} ms", "<= 100 ms",
         verdict(lag["p99_ms"], TARGETS["lag_p99_ms"])),
        ("  max", f"{lag['max_ms']} ms", "-", ""),
    ]  # fmt: skip
    for mode in ("async", "sync"):
        w = latency[mode]
        rows.append((f"INSERT commit on primary ({mode}) p50/p99",
                     f"{w['insert_p50_ms']} / {w['insert_p99_ms']} ms", "-", ""))  # fmt: skip
        rows.append((f"POST /tasks/ via nginx ({mode}) p50/p99",
                     f"{w['post_p50_ms']} / {w['post_p99_ms']} ms", "-", ""))  # fmt: skip
    for f in failovers:
        rows.append((f"failover ({f['mode']}): kill -> first POST ok",
                     f"{f['kill_to_first_post_s']} s", "<= 5 s",
                     verdict(f["kill_to_first_post_s"], TARGETS["failover_s"])))  # fmt: skip
        rows.append(("  failover command wall time", f"{f['failover_command_s']} s", "-", ""))
        rows.append(("  acked writes missing on new primary",
                     f"{f['acked_writes_missing_on_new_primary']} of {f['acked_writes']}",
                     "0 (sync)" if f["mode"] == "sync" else "-",
                     ("PASS" if f["acked_writes_missing_on_new_primary"] == 0 else "MISS")
                     if f["mode"] == "sync" else ""))  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print()
    print(f"command: {results['command']}")
    for name, value, target, mark in rows:
        print(f"{name:<{width}}  {value:>16}  {target:>10}  {mark}")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
