"""`taskscale drill` on a real local stack (2 replicas, then a synchronous standby): faults
reach the supervised processes, the supervisor brings killed ones back and its restart count
is the one the report gives, a hang is resumed (also on Ctrl-C), a killed primary is failed
over with no acknowledged write lost, every report form is written with telemetry, and bad
input that needs the stack is refused before any load.

Times are bounded generously (shared 2-core machine); bench/drill.py measures them.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from taskscale import proc
from taskscale.config import load_project
from taskscale.scaffold import NewProjectSpec, create_project
from taskscale.targets.local import LocalTarget
from taskscale.targets.local.state import StateFile
from tests.cli.test_signals import EXPECTED, interrupt, start_cli
from tests.conftest import CliRunner, one_error_line
from tests.integration.conftest import set_free_ports, stopping_stack

pytestmark = pytest.mark.slow

LOAD = ("--users", "6", "--processes", "1")  # one Locust process: no fixed master port


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("drill")
    project = create_project(NewProjectSpec(name="dtest", output_dir=root, git=False)).path
    set_free_ports(project)
    with stopping_stack(project):
        LocalTarget(load_project(project)).up(2)
        yield project


def _drill(run_cli: CliRunner, project: Path, out: Path, *args: str) -> tuple[int, Any, str]:
    result = run_cli("drill", *args, *LOAD, "--json", "--project", str(project), "--out", str(out))
    report = json.loads(result.stdout) if result.stdout.strip() else None
    return result.exit_code, report, result.stderr


def _status(run_cli: CliRunner, project: Path) -> dict[str, dict[str, Any]]:
    result = run_cli("status", "--json", "--project", str(project))
    assert result.exit_code == 0, result.stderr
    return {s["name"]: s for s in json.loads(result.stdout)["services"]}


def _pid(project: Path, name: str) -> int:
    state = StateFile(project / ".taskscale").load()
    return next(r.pid for r in state.services.values() if r.name == name)


def test_bad_input_needing_the_stack_is_refused_before_any_load(
    run_cli: CliRunner, stack: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    for args, needle in [
        (("--fault", "kill:app-9@2s"), "app-9"),
        (("--fault", "kill:kafka@2s"), "kafka"),  # a redis project has no broker of its own
        (("--fault", "stop:redis@2s+3s", "--fault", "kill:cache@3s"), "redis"),
        (("--fault", "kill:standby@2s"), "standby"),
        (("primary-failover", "--failover", "auto"), "standby"),
    ]:
        code, report, stderr = _drill(run_cli, stack, out, *args, "--duration", "10s")
        assert code == 2, (args, stderr)
        assert needle in one_error_line(stderr), args
        assert report is None and not out.exists()
    # Nothing was touched: no service restarted.
    assert all(s.get("restarts", 0) in (0, None) for s in _status(run_cli, stack).values())


def test_replica_crash_is_restarted_by_the_supervisor(
    run_cli: CliRunner, stack: Path, tmp_path: Path
) -> None:
    before = _status(run_cli, stack)["app-1"]["restarts"]
    old_pid = _pid(stack, "app-1")
    out = tmp_path / "run"
    code, report, stderr = _drill(
        run_cli,
        stack,
        out,
        "replica-crash",
        "--duration",
        "9s",
        "--slo",
        "rto<8s",
        "--slo",
        "rpo=0",
    )
    assert code == 0, stderr
    (fault,) = report["faults"]
    assert (fault["kind"], fault["service"], fault["spec"]) == ("kill", "app-1", "kill:app-1@3s")
    assert f"pid {old_pid}" in fault["detail"]
    # The supervisor's count: once in the report, once more in `status`.
    assert fault["restarts"] == 1
    assert _status(run_cli, stack)["app-1"]["restarts"] == before + 1
    assert _pid(stack, "app-1") != old_pid
    assert fault["service_back_at_s"] is not None
    assert fault["service_back_at_s"] > fault["injected_at_s"]
    assert fault["rto_s"] is not None and fault["rto_s"] < 8
    assert [g["expr"] for g in report["slo"] if g["passed"]] == ["rto<8s", "rpo=0"]
    rpo = report["rpo"]
    assert rpo["acknowledged_writes"] > 0 and rpo["lost"] == 0 and rpo["changed"] == 0
    assert report["drill"]["name"] == "replica-crash"
    samples = report["telemetry"]["samples"]
    assert len(samples) >= 5
    assert any(s["requests_per_replica"] for s in samples)
    assert any("postgres" in s["cpu_percent"] for s in samples)
    # The worker's own series (events handled as the drill's writes flow through the outbox).
    assert any(s["worker_processed_per_s"] for s in samples), samples[-1]
    for name in ("report.json", "report.md", "report.html", "junit.xml"):
        assert (out / name).is_file(), name
    assert "kill:app-1@3s" in (out / "report.md").read_text()


def test_a_hang_is_resumed_and_measured(run_cli: CliRunner, stack: Path, tmp_path: Path) -> None:
    redis_pid = _pid(stack, "redis")
    code, report, stderr = _drill(
        run_cli, stack, tmp_path / "run", "--fault", "stop:cache@2s+2s", "--duration", "7s"
    )
    assert code == 0, stderr
    (fault,) = report["faults"]
    assert (fault["kind"], fault["service"]) == ("stop", "redis")
    assert fault["resumed_at_s"] - fault["injected_at_s"] == pytest.approx(2.0, abs=0.5)
    assert fault["restarts"] == 0  # a stopped process is alive: nothing restarts it
    assert _pid(stack, "redis") == redis_pid
    assert psutil.Process(redis_pid).status() != psutil.STATUS_STOPPED


def test_ctrl_c_resumes_a_frozen_service(stack: Path, tmp_path: Path) -> None:
    redis_pid = _pid(stack, "redis")
    process = start_cli(
        "drill", "--fault", "stop:redis@1s+60s", "--duration", "90s", *LOAD,
        "--project", str(stack), "--out", str(tmp_path / "run"),
    )  # fmt: skip
    try:
        assert proc.poll_until(
            lambda: psutil.Process(redis_pid).status() == psutil.STATUS_STOPPED, 60
        ), "the fault was never injected"
    finally:
        code, stderr = interrupt(process, signal.SIGINT)
    assert code == EXPECTED[signal.SIGINT][0], stderr
    assert stderr[-1] == EXPECTED[signal.SIGINT][1]
    assert psutil.Process(redis_pid).status() != psutil.STATUS_STOPPED
    assert not any("Traceback" in line for line in stderr)


def test_primary_failover_loses_no_acknowledged_write(
    run_cli: CliRunner, stack: Path, tmp_path: Path
) -> None:
    result = run_cli("replicate", "-r", "1", "--sync", "--project", str(stack))
    assert result.exit_code == 0, result.stderr
    code, report, stderr = _drill(
        run_cli, stack, tmp_path / "run", "primary-failover", "--duration", "30s",
        "--slo", "rpo=0", "--slo", "rto<15s",
    )  # fmt: skip
    # On failure, say what the fault did (failover times, failed and slow requests, note).
    assert code == 0, stderr + json.dumps(report and report["faults"], indent=1)
    (fault,) = report["faults"]
    assert (fault["kind"], fault["service"]) == ("kill", "postgres")
    failover = fault["failover"]
    assert failover["mode"] == "auto" and failover["new_primary"] == "postgres-2"
    assert failover["started_at_s"] >= fault["injected_at_s"]
    assert fault["rto_s"] is not None
    # Whether the supervisor restarted the killed primary before the failover took the lock is
    # a race; its log and the report agree on what happened.
    log = (stack / ".taskscale" / "logs" / "supervisor.log").read_text()
    assert log.count("postgres exited") == fault["restarts"], log
    rpo = report["rpo"]
    assert rpo["acknowledged_writes"] > 0 and (rpo["lost"], rpo["changed"]) == (0, 0)
    assert report["drill"]["failover"] == "auto"
    assert "postgres rejoined as a standby of the new primary" in report["drill"]["after"]
    lag = [s["replication_lag_bytes"] for s in report["telemetry"]["samples"]]
    assert any(lag), "no replication lag was sampled"
    status = run_cli("replicate", "status", "--json", "--project", str(stack))
    assert status.exit_code == 0, status.stderr
    nodes = {n["name"]: n for n in json.loads(status.stdout)["nodes"]}
    assert nodes["postgres-2"]["role"] == "primary"
    # The old primary was restarted by the supervisor, fenced, rewound: it streams again.
    assert (nodes["postgres"]["role"], nodes["postgres"]["state"]) == ("standby", "streaming")
    assert nodes["postgres"]["timeline"] == nodes["postgres-2"]["timeline"]
