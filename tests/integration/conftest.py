"""Fixtures of the integration tests: a generated project with its own free loopback ports.

``stack_project`` stops everything the stack started when the test ends, pass or fail: ``down``
through the library, then SIGKILL of every pid the state file ever recorded.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from taskscale.config import load_project
from taskscale.targets.local import LocalTarget
from taskscale.targets.local.ports import port_free
from tests.conftest import CliRunner


def _free_block(size: int) -> int:
    """A base port with ``size`` consecutive free ports (checked, not reserved)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            base = int(sock.getsockname()[1])
        if base + size < 65000 and all(port_free(base + i) for i in range(size)):
            return base
    raise RuntimeError("no block of free ports")


def set_free_ports(project: Path) -> dict[str, int]:
    base = _free_block(48)
    ports = {
        "api": base,
        "app_base": base + 1,  # up to 16 replicas, twice (blue/green rollouts)
        "postgres": base + 34,
        "redis": base + 35,
        "postgres_standby_base": base + 36,  # up to 12 standbys
    }
    config = project / "taskscale.toml"
    text = config.read_text()
    for key, value in ports.items():
        text, count = re.subn(rf"(?m)^{key} = \d+", f"{key} = {value}", text)
        assert count == 1, key
    config.write_text(text)
    return ports


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
