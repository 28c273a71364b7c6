"""Fixtures of the integration tests: a generated project with its own free loopback ports.

``stack_project`` stops everything the stack started when the test ends, pass or fail: ``down``
through the library, then SIGKILL of every pid the state file ever recorded.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from taskscale.config import load_project
from taskscale.targets.local import LocalTarget
from taskscale.targets.local.ports import move_to_free_ports
from tests.conftest import CliRunner


def set_free_ports(project: Path) -> dict[str, int]:
    return move_to_free_ports(project / "taskscale.toml")


def recorded_pids(project: Path) -> list[int]:
    try:
        data = json.loads((project / ".taskscale" / "state.json").read_text())
    except FileNotFoundError:
        return []
    return [int(s["pid"]) for s in data["services"]]


def _kill_leftovers(pids: list[int]) -> None:
    for pid in pids:
        try:
            process = psutil.Process(pid)
            for child in process.children(recursive=True):
                child.kill()
            process.kill()
        except psutil.Error:
            pass


@pytest.fixture
def stack_project(tmp_path: Path, run_cli: CliRunner) -> Iterator[tuple[Path, dict[str, int]]]:
    result = run_cli("new", "itest", "--output-dir", str(tmp_path), "--no-git")
    assert result.exit_code == 0, result.stderr
    project = tmp_path / "itest"
    ports = set_free_ports(project)
    seen: set[int] = set()
    try:
        yield project, ports
    finally:
        seen.update(recorded_pids(project))
        with contextlib.suppress(Exception):  # cleanup must go on
            LocalTarget(load_project(project)).down()
        _kill_leftovers(sorted(seen))
