"""Fixtures of the Docker tests: an engine, local stand-in images, a generated project.

No registry is reachable on CI machines, so ``standin_images`` builds small local images that
stand in for the official python/postgres/redis/nginx ones (tests/docker/standins/build.sh) and
points the TASKSCALE_*_IMAGE variables of the project's compose.yaml at them. Without an engine
these tests skip with the reason, except under CI (CI=true), where a missing engine fails.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from taskscale.config import load_project
from taskscale.errors import TaskscaleError
from taskscale.targets.compose import ComposeTarget
from taskscale.targets.compose.engine import docker_client
from taskscale.targets.local.ports import move_to_free_ports
from tests.conftest import CliRunner

BUILD_SCRIPT = Path(__file__).parent / "standins" / "build.sh"


@pytest.fixture(scope="session")
def docker_engine() -> Any:
    try:
        return docker_client()
    except TaskscaleError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the docker tests, but: {exc}")
        pytest.skip(f"no Docker engine: {exc}")


@pytest.fixture(scope="session")
def standin_images(docker_engine: Any) -> dict[str, str]:
    """Build (or reuse) the stand-in images; returns the TASKSCALE_*_IMAGE variables."""
    done = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1200, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    images: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        images[key] = value
    return images


@pytest.fixture
def compose_project(
    tmp_path: Path,
    run_cli: CliRunner,
    standin_images: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Path]:
    """A generated project (broker redis) on free ports; its containers, network and volumes are
    removed when the test ends, pass or fail."""
    for key, value in standin_images.items():
        monkeypatch.setenv(key, value)
    name = f"dk{os.getpid() % 100000}"
    result = run_cli("new", name, "--broker", "redis", "--output-dir", str(tmp_path), "--no-git")
    assert result.exit_code == 0, result.stderr
    project = tmp_path / name
    move_to_free_ports(project / "taskscale.toml")
    try:
        yield project
    finally:
        target = ComposeTarget(load_project(project))
        with contextlib.suppress(Exception):  # cleanup must go on
            target.down(purge=True)
        client = target.client
        label = f"com.docker.compose.project={name}"
        for container in client.containers.list(all=True, filters={"label": label}):
            container.remove(force=True, v=True)
        for network in client.networks.list(filters={"label": label}):
            network.remove()
        for volume in client.volumes.list(filters={"label": label}):
            volume.remove(force=True)
