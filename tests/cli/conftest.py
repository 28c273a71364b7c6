"""Fixtures of the CLI tests: a minimal project on disk (no app code, nothing started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskscale.targets.local.ports import free_block
from tests.conftest import CliRunner


def free_port() -> int:
    """A free loopback port below the ephemeral range (a port the kernel hands out as a
    client's source port can be taken between this check and a test's bind)."""
    return free_block(1)


def write_minimal_project(root: Path, *, api: int | None = None, max_replicas: int = 4) -> Path:
    """taskscale.toml and .env only: enough for option and port validation. Its ports are one
    block (the api, the replicas' blue and green ports, PostgreSQL, Redis), so they cannot
    overlap each other."""
    root.mkdir(parents=True, exist_ok=True)
    base = free_block(2 * max_replicas + 3)
    (root / "taskscale.toml").write_text(
        f"""\
[project]
name = "mini"
package = "mini"
taskscale_version = "0.1.0"

[ports]
api = {api or base}
app_base = {base + 1}
postgres = {base + 1 + 2 * max_replicas}
redis = {base + 2 + 2 * max_replicas}

[images]
app = "mini:latest"
worker = "mini:latest"

[stack]
replicas = 1
max_replicas = {max_replicas}
"""
    )
    (root / ".env").write_text("POSTGRES_PASSWORD=x\nREDIS_PASSWORD=y\n")
    return root


@pytest.fixture
def mini_project(tmp_path: Path) -> Path:
    return write_minimal_project(tmp_path / "mini")


@pytest.fixture
def generated(tmp_path: Path, run_cli: CliRunner) -> Path:
    """A project `taskscale new` rendered (nothing started)."""
    result = run_cli("new", "gen", "--output-dir", str(tmp_path), "--no-git")
    assert result.exit_code == 0, result.stderr
    return tmp_path / "gen"
