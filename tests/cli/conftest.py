"""Fixtures of the CLI tests: a minimal project on disk (no app code, nothing started)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.conftest import CliRunner


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_minimal_project(root: Path, *, api: int | None = None, max_replicas: int = 4) -> Path:
    """taskscale.toml and .env only: enough for option and port validation."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "taskscale.toml").write_text(
        f"""\
[project]
name = "mini"
package = "mini"
taskscale_version = "0.1.0"

[ports]
api = {api or free_port()}
app_base = {free_port()}
postgres = {free_port()}
redis = {free_port()}

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
