"""The compose target end to end on a real Docker engine (issue 6's scenario)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from taskscale import proc
from taskscale.config import load_project
from taskscale.targets.compose.engine import compose_command
from taskscale.targets.compose.target import ComposeTarget
from tests.client_loop import api_client, api_headers, looping_clients
from tests.conftest import CliRunner, one_error_line

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _status(run_cli: CliRunner, project: Path) -> dict[str, Any]:
    result = run_cli("status", "--json", "--project", str(project))
    assert result.exit_code == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def label_of(project: Path) -> str:
    return f"com.docker.compose.project={project.name}"


def _instances(api: str, count: int) -> Counter[str]:
    seen = Counter[str]()
    with api_client(api) as client:
        for _ in range(count):
            response = client.get("/tasks/", params={"limit": 5})
            assert response.status_code == 200, response.text
            seen[response.headers["x-instance-id"]] += 1
    return seen


def test_compose_up_scale_replicate_loadtest_down(
    run_cli: CliRunner, compose_project: Path, docker_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The scenario first creates its hot set (500 tasks by default, setup requests excluded
    # from the totals); on a busy machine that took the whole 10 s run. 50 keep it short.
    monkeypatch.setenv("LOADTEST_POOL_SIZE", "50")
    project = str(compose_project)
    result = run_cli("up", "--target", "compose", "--replicas", "3", "--project", project)
    assert result.exit_code == 0, result.stderr
    status = _status(run_cli, compose_project)
    assert status["target"] == "compose"  # remembered: no --target needed any more
    apps = [s for s in status["services"] if s["kind"] == "app"]
    assert len(apps) == 3 and all(s["healthy"] for s in apps), apps
    kinds = {s["kind"] for s in status["services"]}
    assert {"app", "lb", "postgres", "redis", "worker"} <= kinds
    api = status["endpoints"]["api"]
    logs = run_cli("logs", "worker", "--tail", "50", "--project", project)
    assert logs.exit_code == 0 and "worker started" in logs.stdout, logs
    logs = run_cli("logs", "--tail", "5", "--project", project)
    assert logs.exit_code == 0 and f"{compose_project.name}-postgres-1 | " in logs.stdout, logs
    unknown = run_cli("logs", "nosuch", "--project", project)
    assert unknown.exit_code == 2 and "choose one of" in unknown.stderr

    with api_client(api) as client:
        created = client.post("/tasks/", json={"title": "compose"})
        assert created.status_code == 201, created.text
    assert len(_instances(api, 60)) == 3

    # Scale in while clients loop: nginx re-resolves the service, so no request may fail.
    headers = api_headers(api)
    with looping_clients(api, "/tasks/", params={"limit": 5}, settle=2.0, headers=headers) as loop:
        result = run_cli("up", "--replicas", "2", "--project", project)
    errors, answered = loop.errors, loop.answered
    assert result.exit_code == 0, result.stderr
    assert errors == [], errors[:5]
    assert sum(answered.values()) > 50
    assert _status(run_cli, compose_project)["replicas"] == 2

    result = run_cli("replicate", "--replicas", "1", "--json", "--project", project)
    assert result.exit_code == 0, result.stderr
    cluster = json.loads(result.stdout)
    standbys = [n for n in cluster["nodes"] if n["role"] == "standby"]
    assert [n["state"] for n in standbys] == ["streaming"], cluster
    result = run_cli("replicate", "status", "--json", "--project", project)
    assert result.exit_code == 0, result.stderr
    assert len([n for n in json.loads(result.stdout)["nodes"] if n["role"] == "standby"]) == 1
    assert len(_instances(api, 10)) == 2  # the re-pointed replicas serve

    # 20 s: ten users logging in (bcrypt) and the seed tasks take seconds of a busy machine
    # before the first measured request.
    out = compose_project / "run"
    result = run_cli(
        "loadtest", "--duration", "20s", "--users", "10", "--spawn-rate", "10",
        "--processes", "1", "--out", str(out), "--project", project,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["environment"]["target"] == "compose"
    assert report["total"]["requests"] > 0
    # Server telemetry (targets/compose/telemetry.py): each replica's /metrics at its address on
    # the compose network, lag from the primary, CPU from the containers' cgroups.
    telemetry = report["telemetry"]
    samples = telemetry["samples"]
    assert len(samples) >= 10, telemetry
    replicas = {name for s in samples for name in s["requests_per_replica"]}
    assert len(replicas) == 2 and all("-app-" in name for name in replicas), replicas
    served = sum(sum(s["requests_per_replica"].values()) for s in samples)
    served *= telemetry["interval_s"]
    peak = max(sum(s["requests_per_replica"].values()) for s in samples)
    # The load's requests, give or take what one sampling interval at either end holds.
    total = report["total"]["requests"]
    assert abs(served - total) <= max(0.1 * total, 2 * peak), (served, total)
    standby_label = [label_of(compose_project), "com.docker.compose.service=postgres-standby"]
    standby_names = {
        c.name for c in docker_engine.containers.list(filters={"label": standby_label})
    }
    assert any(set(s["replication_lag_bytes"]) == standby_names for s in samples), samples[-1]
    assert any(s["cache_hit_ratio"] is not None for s in samples)
    assert any({"app", "postgres", "nginx"} <= set(s["cpu_percent"]) for s in samples)
    assert not any("no server-side telemetry" in n for n in report["notes"]), report["notes"]

    # A drill: a crashed replica comes back by Docker's restart policy (counted), a paused
    # Redis is unpaused; compose cannot promote, so killing the primary needs --failover none.
    refused = run_cli(
        "drill", "--fault", "kill:primary@3s", "--failover", "auto", "--duration", "8s",
        "-p", project,
    )  # fmt: skip
    assert refused.exit_code == 6 and "failover" in one_error_line(refused.stderr)
    drilled = compose_project / "drill"
    result = run_cli(
        "drill", "--fault", "kill:app-1@8s", "--fault", "stop:redis@10s+2s", "--duration", "20s",
        "--users", "6", "--processes", "1", "--json", "--out", str(drilled), "--project", project,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    drill = json.loads(result.stdout)
    faults = {f["service"]: f for f in drill["faults"]}
    assert faults["app-1"]["kind"] == "kill" and "SIGKILL" in faults["app-1"]["detail"]
    assert faults["app-1"]["restarts"] == 1
    assert faults["redis"]["resumed_at_s"] is not None and faults["redis"]["restarts"] == 0
    assert drill["rpo"]["acknowledged_writes"] > 0 and drill["rpo"]["lost"] == 0
    paused = docker_engine.containers.list(filters={"label": label_of(compose_project)})
    assert all(c.status == "running" for c in paused), [(c.name, c.status) for c in paused]

    result = run_cli("down", "--purge", "--project", project)
    assert result.exit_code == 0, result.stderr
    label = label_of(compose_project)
    assert docker_engine.containers.list(all=True, filters={"label": label}) == []
    assert docker_engine.networks.list(filters={"label": label}) == []
    assert docker_engine.volumes.list(filters={"label": label}) == []
    again = run_cli("down", "--target", "compose", "--project", project)
    assert again.exit_code == 0, again.stderr


def test_compose_up_failure_names_the_service_and_cleans_up(
    run_cli: CliRunner, compose_project: Path, docker_engine: Any
) -> None:
    # A broken migration: `up` must name the failing service, show its log, and stop the rest.
    migration = compose_project / "migrations" / "versions" / "0001_initial.py"
    migration.write_text(migration.read_text() + "\nraise RuntimeError('broken on purpose')\n")
    result = run_cli(
        "up", "--target", "compose", "--replicas", "1", "--project", str(compose_project)
    )
    assert result.exit_code != 0
    assert (
        "migrate" in result.stderr and "Traceback (most recent" not in result.stderr.splitlines()[0]
    )
    label = label_of(compose_project)
    assert docker_engine.containers.list(filters={"label": label}) == []


def test_plain_docker_compose_from_the_root(
    compose_project: Path, docker_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compose.yaml works as Compose users expect (issue 15): from the project's root, `docker
    compose up -d --wait --scale app=3` and `--profile replication` need no -f and no
    --env-file (Compose reads compose.yaml and .env there). Only the images (the stand-ins of
    this machine) and the public port (a free one) come from the environment, as documented."""
    config = load_project(compose_project).config
    ComposeTarget(load_project(compose_project)).build()  # the image `docker compose build` makes
    monkeypatch.setenv("TASKSCALE_API_PORT", str(config.ports.api))
    compose = [*compose_command()]

    def run(*args: str) -> str:
        done = proc.run([*compose, *args], timeout=600, cwd=compose_project)
        return done.stdout

    run("up", "-d", "--wait", "--scale", "app=3")
    api = f"http://127.0.0.1:{config.ports.api}"
    assert len(_instances(api, 30)) == 3  # nginx spreads over the three scaled replicas

    run("--profile", "replication", "up", "-d", "--wait", "--scale", "app=3")
    rows = [json.loads(line) for line in run("ps", "--format", "json").splitlines() if line]
    states = {(row["Service"], row["Health"]) for row in rows}
    assert ("postgres-standby", "healthy") in states, states
    assert sum(row["Service"] == "app" for row in rows) == 3
    run("--profile", "replication", "down", "--volumes")
    assert (
        docker_engine.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={compose_project.name}"}
        )
        == []
    )
