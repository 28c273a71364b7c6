"""`taskscale loadtest` against the real local stack (PostgreSQL, Redis, uvicorn, nginx).

A 10 s run of the project's own scenario whose request count equals nginx's access log, and a
replica sweep 1,2 that scales the stack through the Target interface. The stack is started once
for the module and always stopped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskscale.config import load_project
from taskscale.scaffold import NewProjectSpec, create_project
from taskscale.targets import get_target
from tests.conftest import CliRunner
from tests.integration.conftest import set_free_ports, stopping_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("loadstack")
    project = create_project(
        NewProjectSpec(name="loadapi", output_dir=root, broker="redis", git=False)
    ).path
    set_free_ports(project)
    with stopping_stack(project):
        get_target("local", load_project(project)).up(1)
        yield project


@pytest.fixture(autouse=True)
def _small_hot_set(monkeypatch: pytest.MonkeyPatch) -> None:
    # The generated scenario first creates a pool of tasks per Locust process (500 by default,
    # several seconds); keep that setup short in these 5-10 s runs.
    monkeypatch.setenv("LOADTEST_POOL_SIZE", "50")


def _loadtest(run_cli: CliRunner, stack: Path, *extra: str) -> dict[str, Any]:
    """``taskscale loadtest --json`` of the project's own mixed scenario (10 users) against the
    stack; asserts it succeeded and returns its JSON."""
    result = run_cli(
        "loadtest",
        "--project",
        str(stack),
        "--scenario",
        "mixed",
        "-u",
        "10",
        "-r",
        "10",
        *extra,
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _access_lines(project: Path) -> list[str]:
    log = project / ".taskscale" / "logs" / "nginx-access.log"
    return log.read_text().splitlines() if log.exists() else []


def test_run_against_the_stack_matches_nginx_access_log(run_cli: CliRunner, stack: Path) -> None:
    before = len(_access_lines(stack))
    run_dir = stack / "run-10s"
    data = _loadtest(run_cli, stack, "-d", "10s", "--out", str(run_dir))
    # Not load: taskscale's readiness probe and the target's health check of nginx (status()).
    probes = ('"GET /readyz ', '"GET /healthz ')
    served = [line for line in _access_lines(stack)[before:] if not any(p in line for p in probes)]
    # Registration, logins and the hot set's creation are reported apart, not in the total.
    excluded = {e["name"]: e["requests"] for e in data["endpoints"] if e["excluded"]}
    assert set(excluded) == {
        "GET /tasks/ (setup)",
        "POST /auth/register (setup)",
        "POST /auth/token (setup)",
        "POST /tasks/ (setup)",
    }
    assert excluded["POST /auth/token (setup)"] >= 10  # every user logged in once
    assert data["total"]["requests"] + sum(excluded.values()) == len(served)
    assert data["total"]["requests"] > 100
    assert data["total"]["unanswered"] == 0
    assert data["total"]["error_rate"] < 1
    env = data["environment"]
    assert env["target"] == "local" and env["replicas"] == 1
    for name in ("report.json", "report.md", "report.html", "junit.xml", "locust_stats.csv"):
        assert (run_dir / name).is_file(), name


def test_sweep_1_2_produces_the_scaling_table(run_cli: CliRunner, stack: Path) -> None:
    run_dir = stack / "sweep"
    data = _loadtest(run_cli, stack, "-d", "5s", "--sweep-replicas", "1,2", "--out", str(run_dir))
    assert data["kind"] == "sweep"
    steps = data["sweep"]["steps"]
    assert [s["replicas"] for s in steps] == [1, 2]
    assert steps[0]["efficiency"] == 1.0 and steps[1]["efficiency"] > 0
    assert all(s["requests"] > 0 and s["rps"] > 0 and s["p99"] >= s["p95"] for s in steps)
    for step in steps:
        step_report = json.loads((run_dir / step["run_dir"] / "report.json").read_text())
        assert step_report["environment"]["replicas"] == step["replicas"]
    assert "Scaling: throughput and latency vs replicas" in (run_dir / "report.md").read_text()
    assert "Throughput vs replicas" in (run_dir / "report.html").read_text()
    rerendered = run_cli("report", str(run_dir), "--json")
    assert rerendered.exit_code == 0, rerendered.stderr
    assert json.loads(rerendered.stdout)["sweep"]["steps"] == steps
    # The stack is back at its replica count from before the sweep.
    assert get_target("local", load_project(stack)).status().replicas == 1
