"""The generated CI workflow can pass: its shape (Python 3.11-3.13, pinned tools, every install
from uv.lock), a lock that matches pyproject.toml, and its steps that need neither the network,
a Docker engine nor a cluster run here (tests/integration/test_generated_ci_steps.py runs the
rest that can run on this machine)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from taskscale.choices import Auth, Broker
from taskscale.errors import MissingBinary
from taskscale.scaffold import NewProjectSpec, create_project
from taskscale.targets.compose.engine import compose_command
from tests import workflow

# Every step of the workflow, by job: where it can run. A step missing here fails the test.
RUNS_HERE = {
    "lint": {"Install the locked dependencies", "ruff", "ruff format", "mypy"},
    "test": {"Install the locked dependencies", "pytest"},
    "manifests": {"Install the locked validator", "Build every overlay", "Validate strictly"},
    "compose": {
        "Secrets for this run only",
        "docker compose config",
        "Install the locked schemathesis",
    },
}
# Steps that install what this machine already has (checked on PATH instead).
PROVIDED = {("manifests", "Install kubectl"): "kubectl"}
NEEDS_ENGINE = {
    "compose": {
        "docker build",
        "docker build (loadtest image)",
        "Start the stack",
        "schemathesis against the running stack",
        "Logs of a failed run",
        "Stop the stack",
    }
}
# The fast tier's subset: no network (no uv sync), no engine.
OFFLINE = {
    ("manifests", "Build every overlay"),
    ("compose", "Secrets for this run only"),
    ("compose", "docker compose config"),
}
USES = re.compile(r"^[\w.-]+/[\w.-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})$")


def render(tmp_path: Path, broker: Broker = "redis", auth: Auth = "jwt") -> Path:
    return create_project(
        NewProjectSpec(name="tasks-api", output_dir=tmp_path, broker=broker, auth=auth, git=False)
    ).path


def classify(job: str, step: workflow.Step) -> str:
    if step.uses is not None:
        return "uses"
    if step.name in RUNS_HERE.get(job, set()):
        return "here"
    if (job, step.name) in PROVIDED:
        return "provided"
    if step.name in NEEDS_ENGINE.get(job, set()):
        return "engine"
    raise AssertionError(f"step {job} / {step.name!r} is not classified in {__file__}")


@pytest.mark.parametrize("auth", ["jwt", "none"])
def test_workflow_shape_and_pins(tmp_path: Path, auth: Auth) -> None:
    project = render(tmp_path, auth=auth)
    flow = workflow.load(project)
    assert set(flow["jobs"]) == {"lint", "test", "manifests", "compose"}
    assert flow["on"]["pull_request"] is None and flow["permissions"] == {"contents": "read"}
    assert workflow.matrix(flow, "test") == [
        {"python-version": v} for v in ("3.11", "3.12", "3.13")
    ]
    # One uv version for CI and the image; kubectl at a fixed release.
    dockerfile = (project / "deploy" / "Dockerfile").read_text()
    (uv_in_image,) = re.findall(r"ARG UV_VERSION=(\S+)", dockerfile)
    assert flow["env"]["UV_VERSION"] == uv_in_image
    assert re.fullmatch(r"v\d+\.\d+\.\d+", flow["env"]["KUBECTL_VERSION"])
    kinds: dict[str, int] = {}
    for job, step in workflow.all_steps(flow):
        kind = classify(job, step)
        kinds[kind] = kinds.get(kind, 0) + 1
        if step.uses is not None:
            assert USES.match(step.uses), f"{step.uses} is not pinned to a version"
        if step.uses is not None and step.uses.startswith("astral-sh/setup-uv@"):
            raw = next(s for s in flow["jobs"][job]["steps"] if s.get("uses") == step.uses)
            assert raw["with"]["version"] == "${{ env.UV_VERSION }}"
        for line in (step.run or "").splitlines():
            if "uv sync" in line:
                assert "--locked" in line, line  # installs exactly uv.lock, or fails
            if re.search(r"\bpip install\b", line):
                raise AssertionError(f"an install that bypasses uv.lock: {line}")
    assert kinds["here"] >= 9 and kinds["engine"] == 6
    for job, step in workflow.all_steps(flow):
        if (job, step.name) in PROVIDED:
            assert step.step_id, "a provided step needs an id"
    assert "kubernetes-validate" in (project / "pyproject.toml").read_text()


@pytest.mark.parametrize(("broker", "auth"), [("redis", "jwt"), ("kafka", "none")])
def test_the_lock_matches_pyproject(tmp_path: Path, broker: Broker, auth: Auth) -> None:
    """uv.lock is rendered for the project's name and answers: `uv lock --check` accepts it
    with no network and an empty cache (the lock alone proves it is current)."""
    uv = workflow.uv_binary()
    if uv is None:
        if os.environ.get("CI"):
            pytest.fail("CI must check the generated uv.lock: uv is missing (dev extra)")
        pytest.skip("uv is not installed (taskscale's dev extra has it)")
    project = render(tmp_path, broker, auth)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("UV_")},
        "UV_CACHE_DIR": str(tmp_path / "empty-cache"),
        "UV_PYTHON_DOWNLOADS": "never",
    }
    done = subprocess.run(
        [uv, "lock", "--check", "--offline"],
        cwd=project, capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lock = (project / "uv.lock").read_text()
    assert 'name = "tasks-api"\nversion = "0.1.0"\nsource = { editable = "." }' in lock
    assert ('name = "pyjwt"' in lock) == (auth == "jwt")
    # A changed requirement makes the same check fail: the CI step would catch it.
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"orjson>=3.8"', '"orjson>=3.8", "six"'))
    stale = subprocess.run(
        [uv, "lock", "--check", "--offline"],
        cwd=project, capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert stale.returncode != 0


def _tools() -> None:
    missing = [tool for tool in ("kubectl", "openssl") if shutil.which(tool) is None]
    try:
        compose_command()
    except MissingBinary:
        missing.append("docker compose")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the workflow's steps: {', '.join(missing)} missing")
        pytest.skip(f"{', '.join(missing)} not installed")


@pytest.mark.kubernetes
def test_offline_steps_run_here(tmp_path: Path) -> None:
    _tools()
    project = render(tmp_path)
    flow = workflow.load(project)
    runner = workflow.Runner(project, tmp_path / "runner")
    ran: list[tuple[str, str]] = []
    for job, step in workflow.all_steps(flow):
        if (job, step.name) in OFFLINE:
            runner.run(step, timeout=180)
            ran.append((job, step.name))
    assert sorted(ran) == sorted(OFFLINE)
    built = sorted(p.name for p in (project / "build").glob("*.yaml"))
    assert built == [
        "minikube-loadtest.yaml",
        "minikube.yaml",
        "production-loadtest.yaml",
        "production.yaml",
    ]
    assert "kind: Deployment\nmetadata:" in (project / "build" / "production.yaml").read_text()
    assert "locust-master" in (project / "build" / "minikube-loadtest.yaml").read_text()
    env: dict[str, Any] = dict(
        line.split("=", 1) for line in (project / ".env").read_text().splitlines()
    )
    assert len(env["SECRET_KEY"]) == 48 and env["POSTGRES_USER"] == "tasks"
