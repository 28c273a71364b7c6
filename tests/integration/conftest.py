"""Fixtures of the integration tests: a generated project with its own free loopback ports.

``stack_project`` stops everything the stack started when the test ends, pass or fail: ``down``
through the library, then SIGKILL of every pid the state file recorded (``stopping_stack``, which
module-scoped stacks use too).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from taskscale.config import STATE_DIR, load_project
from taskscale.targets.local import LocalTarget
from taskscale.targets.local.ports import move_to_free_ports
from taskscale.targets.local.state import StateFile
from tests.conftest import CliRunner


def run_ok(argv: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    """Run a command (a test's own tool: pip, pytest, ruff) and return its stdout; fail the
    test with the tails of both outputs when it exits non-zero."""
    proc = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    assert proc.returncode == 0, f"{argv} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def set_free_ports(project: Path) -> dict[str, int]:
    return move_to_free_ports(project / "taskscale.toml")


def recorded_pids(project: Path) -> list[int]:
    """Every pid the project's state file records (none when no stack was started), the
    supervisor process's first (killed last, it would restart the others)."""
    services = StateFile(project / STATE_DIR).load().services.values()
    return [s.pid for s in sorted(services, key=lambda s: (s.kind != "supervisor", s.pid))]


def _kill_leftovers(pids: list[int]) -> None:
    for pid in pids:
        try:
            process = psutil.Process(pid)
            for child in process.children(recursive=True):
                child.kill()
            process.kill()
        except psutil.Error:
            pass


@contextlib.contextmanager
def stopping_stack(project: Path) -> Iterator[None]:
    """When the block ends, pass or fail: ``down``, then SIGKILL of every pid the state file
    recorded at that moment (so also the replicas a sweep or a rollout started)."""
    try:
        yield
    finally:
        pids = recorded_pids(project)
        with contextlib.suppress(Exception):  # cleanup must go on
            LocalTarget(load_project(project)).down()
        _kill_leftovers(pids)


@pytest.fixture
def stack_project(tmp_path: Path, run_cli: CliRunner) -> Iterator[tuple[Path, dict[str, int]]]:
    result = run_cli("new", "itest", "--output-dir", str(tmp_path), "--no-git")
    assert result.exit_code == 0, result.stderr
    project = tmp_path / "itest"
    ports = set_free_ports(project)
    with stopping_stack(project):
        yield project, ports
