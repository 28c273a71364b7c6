"""The generated project installs into a fresh virtual environment and its own suite passes.

This is the user's first experience (`taskscale new` then `pip install -e '.[test]' && pytest`),
so it runs the real thing: a new venv, pip, and the project's tests against the real PostgreSQL
and Redis its fixtures start.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from taskscale.scaffold import NewProjectSpec, create_project

pytestmark = pytest.mark.slow


def _run(argv: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    assert proc.returncode == 0, f"{argv} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_generated_project_suite_passes_in_fresh_venv(tmp_path: Path) -> None:
    project = create_project(
        NewProjectSpec(name="tasks-api", output_dir=tmp_path, broker="redis", git=True)
    ).path
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, 120)
    python = str(venv / "bin" / "python")
    _run([python, "-m", "pip", "install", "-q", "-e", ".[test]"], project, 900)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "VIRTUAL_ENV", "PYTHONPATH"}
    }
    out = _run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider"], project, 600, env)
    assert " passed" in out and " failed" not in out, out[-2000:]
