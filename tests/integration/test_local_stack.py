"""The local target end to end, with real PostgreSQL, Redis, uvicorn replicas and nginx.

`new` -> `up --replicas 3` -> requests reach every replica -> scale to 1 under load with zero
failed requests -> a killed replica shows as dead and `up` heals it -> `down` leaves no process and
no listening port. Every project gets its own free loopback ports; the fixture stops everything it
started (down, then SIGKILL of any recorded pid) even when a test fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest

from taskscale import proc
from taskscale.targets.local.ports import port_free
from tests.client_loop import api_client, api_headers, looping_clients
from tests.conftest import CliResult, CliRunner
from tests.integration.conftest import recorded_pids

pytestmark = pytest.mark.slow


def assert_no_path_around_auth(api: str, task_id: int, secret: str) -> None:
    with httpx.Client(base_url=api, timeout=10, trust_env=False) as anonymous:
        for headers in ({}, {"Authorization": "Bearer forged"}, {"X-Read-Consistency": "primary"}):
            response = anonymous.get(f"/tasks/{task_id}", headers=headers)
            assert response.status_code == 401 and secret not in response.text, response.text
        account = {"email": "intruder@example.com", "password": "intruder password"}
        assert anonymous.post("/auth/register", json=account).status_code == 201
        form = {"username": account["email"], "password": account["password"]}
        token = anonymous.post("/auth/token", data=form).json()["access_token"]
        intruder = {"Authorization": f"Bearer {token}"}
        for _ in range(6):  # every replica, round-robin
            response = anonymous.get(f"/tasks/{task_id}", headers=intruder)
            assert response.status_code == 404 and secret not in response.text, response.text
        # nginx refuses /metrics on the public port, whatever a client sends.
        assert anonymous.get("/metrics").status_code == 404


def assert_contract_holds_through_nginx(api: str) -> None:
    """schemathesis against the stack (nginx, replicas, PostgreSQL, Redis) with a bearer token:
    no 5xx from any layer, every response as /openapi.json documents it."""
    executable = shutil.which("schemathesis", path=os.path.dirname(sys.executable))
    assert executable, "schemathesis is missing: pip install -e '.[dev]'"
    auth = [f"{name}: {value}" for name, value in api_headers(api).items()]
    checks = "not_a_server_error,response_schema_conformance"
    argv = [executable, "run", f"{api}/openapi.json", "--checks", checks, "--max-examples", "25"]
    argv += [arg for header in auth for arg in ("-H", header)]
    argv += ["--seed", "7", "--no-color", "--request-timeout", "10"]
    argv += ["--generation-database", "none"]
    # Its own cache directory (.schemathesis/) goes to a scratch cwd, not the checkout.
    with tempfile.TemporaryDirectory() as scratch:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=600, check=False, cwd=scratch
        )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def _status(run_cli: CliRunner, project: Path) -> dict[str, object]:
    result = run_cli("status", "--json", "--project", str(project))
    assert result.exit_code == 0, result.stderr
    data: dict[str, object] = json.loads(result.stdout)
    return data


def _services(status: dict[str, object]) -> dict[str, dict[str, object]]:
    services = status["services"]
    assert isinstance(services, list)
    return {s["name"]: s for s in services}


def _scale_under_load(
    run_cli: CliRunner, api: str, project: str, replicas: int
) -> tuple[CliResult, Counter[str], list[str]]:
    """``up --replicas N`` while three clients loop GETs over keep-alive connections."""
    with looping_clients(api, "/healthz", max_seconds=60) as loop:
        result = run_cli("up", "--replicas", str(replicas), "--project", project)
    return result, loop.answered, loop.errors


def test_up_scale_heal_down(run_cli: CliRunner, stack_project: tuple[Path, dict[str, int]]) -> None:
    project, ports = stack_project
    api = f"http://127.0.0.1:{ports['api']}"
    p = str(project)
    # Without the restart policy (test_local_restarts.py covers it): nothing but `up` heals,
    # and no supervisor process runs.
    config = project / "taskscale.toml"
    config.write_text(config.read_text().replace('policy = "always"', 'policy = "never"'))

    # up --replicas 3: every service running and healthy, the JSON shape of the issue.
    result = run_cli("up", "--replicas", "3", "--project", p)
    assert result.exit_code == 0, result.stderr
    status = _status(run_cli, project)
    services = _services(status)
    assert set(services) == {"postgres", "redis", "app-1", "app-2", "app-3", "worker", "nginx"}
    assert not (project / ".taskscale" / "logs" / "supervisor.log").exists()
    assert {s["kind"] for s in services.values()} == {"postgres", "redis", "app", "worker", "lb"}
    assert all(s["healthy"] for s in services.values()), services
    assert status["endpoints"] == {"api": api}

    # 60 requests through nginx reach all three replicas.
    with api_client(api) as client:
        seen = Counter(client.get("/healthz").headers["x-instance-id"] for _ in range(60))
        assert set(seen) == {"itest-app-1", "itest-app-2", "itest-app-3"}, seen
        created = client.post("/tasks/", json={"title": "through nginx"})
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        assert client.get(f"/tasks/{task_id}").status_code == 200
        # No path around auth: once the task is in Redis and in every replica's memory (a read
        # per replica), it is still 401 without a token and 404 with another user's.
        for _ in range(12):
            assert client.get(f"/tasks/{task_id}").json()["title"] == "through nginx"
    assert_no_path_around_auth(api, task_id, "through nginx")

    # Scale out to 5, then in to 1, while clients loop: zero failed requests.
    for replicas in (5, 1):
        result, answered, errors = _scale_under_load(run_cli, api, p, replicas)
        assert result.exit_code == 0, result.stderr
        assert errors == [], (replicas, errors[:5])
        assert sum(answered.values()) > 50, answered
    assert "itest-app-5" in answered  # replicas 4 and 5 served before they were removed
    services = _services(_status(run_cli, project))
    assert "app-2" not in services and "app-3" not in services
    assert not port_free(ports["app_base"]) and port_free(ports["app_base"] + 1)

    # Kill the replica: status shows it dead with its log; up heals it.
    old_pid = int(str(services["app-1"]["pid"]))
    os.kill(old_pid, signal.SIGKILL)
    assert proc.wait_for_exit(old_pid, 5)
    app1 = _services(_status(run_cli, project))["app-1"]
    assert app1["state"] == "dead" and app1["healthy"] is False
    assert app1["log_tail"]
    human = run_cli("status", "--project", p)
    assert "app-1 is dead" in human.stderr
    result = run_cli("up", "--replicas", "1", "--project", p)
    assert result.exit_code == 0, result.stderr
    app1 = _services(_status(run_cli, project))["app-1"]
    assert app1["state"] == "running" and app1["healthy"] is True
    assert app1["pid"] != old_pid
    with api_client(api) as client:
        assert client.get(f"/tasks/{task_id}").status_code == 200  # data kept

    # logs of one service, and of an unknown one.
    assert run_cli("logs", "nginx-access", "--tail", "5", "--project", p).stdout.count("\n") == 5
    assert run_cli("logs", "nope", "--project", p).exit_code == 2
    # The migrations' output has the name it has on compose and Kubernetes.
    migrate = run_cli("logs", "migrate", "--tail", "50", "--project", p)
    assert migrate.exit_code == 0 and "alembic" in migrate.stdout.lower(), migrate.stderr

    # down: no process, no listening port; twice is fine.
    pids = recorded_pids(project)
    result = run_cli("down", "--project", p)
    assert result.exit_code == 0, result.stderr
    assert all(not proc.pid_alive(pid) for pid in pids)
    for port in (ports["api"], ports["app_base"], ports["postgres"], ports["redis"]):
        assert port_free(port), port
    again = run_cli("down", "--project", p)
    assert again.exit_code == 0 and "nothing running" in again.stderr


def test_openapi_contract_holds_through_nginx(
    run_cli: CliRunner, stack_project: tuple[Path, dict[str, int]]
) -> None:
    """schemathesis against the whole stack (nginx, 2 replicas, PostgreSQL, Redis) with a bearer
    token: no 5xx from any layer (it found nginx's temp-file 500 for 16 KiB+ bodies), every
    response as /openapi.json documents it. Its own stack: its many client connections take
    ephemeral ports that a replica started afterwards might want."""
    project, ports = stack_project
    result = run_cli("up", "--replicas", "2", "--project", str(project))
    assert result.exit_code == 0, result.stderr
    assert_contract_holds_through_nginx(f"http://127.0.0.1:{ports['api']}")


def test_failed_replica_stops_what_up_started(
    run_cli: CliRunner, stack_project: tuple[Path, dict[str, int]]
) -> None:
    project, ports = stack_project
    main = project / "app" / "main.py"
    main.write_text(main.read_text() + "\nraise RuntimeError('boom at import')\n")
    result = run_cli("up", "--replicas", "2", "--project", str(project))
    assert result.exit_code == 6, result.stderr
    assert re.search(r"app-[12] exited while starting", result.stderr), result.stderr
    assert "boom at import" in result.stderr  # the log tail is shown
    assert not (project / ".taskscale" / "state.json").exists()
    for port in ports.values():
        assert port_free(port), port


def test_failure_before_the_replicas_kills_the_early_launcher(
    run_cli: CliRunner, stack_project: tuple[Path, dict[str, int]]
) -> None:
    """The replica launcher starts before PostgreSQL and Redis; a failure in between (here a
    .env without the Redis password) stops PostgreSQL and leaves no launcher behind."""
    project, ports = stack_project
    env = project / ".env"
    env.write_text(
        "".join(
            line
            for line in env.read_text().splitlines(keepends=True)
            if not line.startswith("REDIS_PASSWORD=")
        )
    )
    result = run_cli("up", "--replicas", "3", "--project", str(project))
    assert result.exit_code == 1, result.stderr
    assert ".env has no REDIS_PASSWORD" in result.stderr
    assert not (project / ".taskscale" / "state.json").exists()
    for port in ports.values():
        assert port_free(port), port
    launchers = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = process.info["cmdline"] or []
        if process.info["cwd"] == str(project) and any("gc.freeze()" in a for a in cmdline):
            launchers.append(process.pid)
    assert launchers == []
