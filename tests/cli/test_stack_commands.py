"""`up`, `status`, `logs`, `down`: exit codes and one-line messages for bad input, and the
commands that must work when nothing runs. Nothing here starts a service."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from taskscale.targets.local.state import ServiceRecord, StackState, StateFile
from tests.cli.conftest import write_minimal_project
from tests.conftest import CliRunner, dead_pid, one_error_line


@pytest.mark.parametrize("command", ["up", "status", "logs", "down"])
def test_outside_a_project(
    run_cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_cli(command)
    assert result.exit_code == 3
    assert "not inside a taskscale project" in one_error_line(result.stderr)


@pytest.mark.parametrize(("replicas", "needle"), [("0", "at least 1"), ("5", "maximum of 4")])
def test_replicas_out_of_range(
    run_cli: CliRunner, mini_project: Path, replicas: str, needle: str
) -> None:
    result = run_cli("up", "--replicas", replicas, "--project", str(mini_project))
    assert result.exit_code == 2
    assert needle in one_error_line(result.stderr)
    assert not (mini_project / ".taskscale").exists()  # validated before touching anything


def test_port_taken_names_port_and_holder(run_cli: CliRunner, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = int(sock.getsockname()[1])
        project = write_minimal_project(tmp_path / "p", api=port)
        result = run_cli("up", "-r", "1", "--project", str(project))
    assert result.exit_code == 6
    line = one_error_line(result.stderr)
    assert f"port {port} (needed for nginx) is already in use" in line
    assert "pid" in line
    state_dir = project / ".taskscale"
    assert not (state_dir / "state.json").exists()
    assert not (state_dir / "postgres").exists()


def test_status_when_nothing_runs(run_cli: CliRunner, mini_project: Path) -> None:
    result = run_cli("status", "--project", str(mini_project))
    assert result.exit_code == 0
    assert "not running" in result.stderr
    result = run_cli("status", "--json", "--project", str(mini_project))
    data = json.loads(result.stdout)
    assert data["services"] == []
    assert data["endpoints"]["api"].startswith("http://127.0.0.1:")


def test_down_twice_is_fine(run_cli: CliRunner, mini_project: Path) -> None:
    for _ in range(2):
        result = run_cli("down", "--project", str(mini_project))
        assert result.exit_code == 0, result.stderr
        assert "nothing running" in result.stderr


def test_down_purge_keeps_project_files(run_cli: CliRunner, mini_project: Path) -> None:
    logs = mini_project / ".taskscale" / "logs"
    logs.mkdir(parents=True)
    (logs / "redis.log").write_text("x\n")
    result = run_cli("down", "--purge", "--project", str(mini_project))
    assert result.exit_code == 0
    assert not logs.exists()
    assert (mini_project / "taskscale.toml").is_file() and (mini_project / ".env").is_file()


def test_logs_of_unknown_service_lists_valid_names(run_cli: CliRunner, mini_project: Path) -> None:
    logs = mini_project / ".taskscale" / "logs"
    logs.mkdir(parents=True)
    (logs / "redis.log").write_text("ready\n")
    # Recorded (here: crashed) services are a stack whose logs can be read.
    record = ServiceRecord("redis", "redis", dead_pid(), 1, str(logs / "redis.log"), ["redis"])
    StateFile(mini_project / ".taskscale").save(StackState({"redis": record}))
    result = run_cli("logs", "nope", "--project", str(mini_project))
    assert result.exit_code == 2
    assert "unknown service 'nope': choose one of redis" in one_error_line(result.stderr)
    result = run_cli("logs", "redis", "--project", str(mini_project))
    assert result.exit_code == 0
    assert result.stdout.strip() == "ready"


def test_logs_of_a_stack_that_is_not_running(run_cli: CliRunner, mini_project: Path) -> None:
    logs = mini_project / ".taskscale" / "logs"
    logs.mkdir(parents=True)
    (logs / "redis.log").write_text("ready\n")
    result = run_cli("logs", "redis", "--project", str(mini_project))
    assert result.exit_code == 6
    line = one_error_line(result.stderr)
    assert "the stack is not running" in line and str(logs) in line
    assert result.stdout == ""


def test_status_shows_a_crash_loop_with_its_restarts_last_exit_and_log(
    run_cli: CliRunner, mini_project: Path
) -> None:
    """What the supervisor left in state.json after giving up, as `status` renders it (no
    process runs: every recorded pid is dead, so no probe is made)."""
    logs = mini_project / ".taskscale" / "logs"
    logs.mkdir(parents=True)
    (logs / "worker.log").write_text("Traceback ...\nRuntimeError: broken worker\n")
    state = StackState()
    state.add(
        ServiceRecord(
            "worker", "worker", dead_pid(), None, str(logs / "worker.log"), ["w"],
            restarts=5, last_exit="exit 1", crash_loop=True,
        )
    )  # fmt: skip
    state.add(ServiceRecord("redis", "redis", dead_pid(), 1, str(logs / "r.log"), ["r"]))
    StateFile(mini_project / ".taskscale").save(state)
    result = run_cli("status", "--json", "--project", str(mini_project))
    rows = {s["name"]: s for s in json.loads(result.stdout)["services"]}
    assert (rows["worker"]["state"], rows["worker"]["restarts"], rows["worker"]["last_exit"]) == (
        "crash-loop",
        5,
        "exit 1",
    )
    assert rows["redis"]["state"] == "dead"  # no supervisor runs: nothing restarts it
    human = run_cli("status", "--project", str(mini_project))
    assert human.exit_code == 0
    assert "5 (last: exit 1)" in human.stdout
    assert "worker is in a crash loop" in human.stderr
    assert "RuntimeError: broken worker" in human.stdout
    assert "no supervisor process" in human.stderr
