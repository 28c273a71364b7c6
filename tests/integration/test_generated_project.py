"""The generated project installs into a fresh virtual environment and its own suite passes.

This is the user's first experience (`taskscale new` then `pip install -e '.[test]' && pytest`),
so it runs the real thing: a new venv, pip, and the project's tests against the real PostgreSQL
and Redis its fixtures start, for the default ``--auth jwt`` (the ``none`` project's suite runs
from its lock in test_generated_ci_steps: each suite once). The suite includes the OpenAPI
contract test (schemathesis against the app served by uvicorn: no 5xx, every response as
documented).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from taskscale.choices import Auth
from taskscale.scaffold import NewProjectSpec, create_project
from tests.integration.conftest import run_ok

pytestmark = pytest.mark.slow


def test_generated_project_suite_passes_in_fresh_venv(tmp_path: Path) -> None:
    auth: Auth = "jwt"
    project = create_project(
        NewProjectSpec(name="tasks-api", output_dir=tmp_path, broker="redis", auth=auth, git=True)
    ).path
    venv = tmp_path / "venv"
    run_ok([sys.executable, "-m", "venv", str(venv)], tmp_path, 120)
    python = str(venv / "bin" / "python")
    run_ok([python, "-m", "pip", "install", "-q", "-e", ".[test]"], project, 900)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "VIRTUAL_ENV", "PYTHONPATH"}
    }
    out = run_ok([python, "-m", "pytest", "-v", "-p", "no:cacheprovider"], project, 900, env)
    assert " passed" in out and " failed" not in out, out[-2000:]
    must_pass = ["test_contract.py::test_schemathesis_finds_no_server_error_and_no_undocumented"]
    if auth == "jwt":
        must_pass.append("test_auth.py::test_no_path_around_auth_for_a_task_in_every_cache_layer")
    for test in must_pass:
        assert re.search(rf"tests/{re.escape(test)}\S* PASSED", out), (test, out[-2000:])
    # Pointed at servers the suite did not create, it refuses in one line and touches nothing.
    foreign = {**env, "DATABASE_URL": "postgresql://someone@127.0.0.1:1/precious"}
    refused = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project, capture_output=True, text=True, timeout=120, env=foreign, check=False,
    )  # fmt: skip
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert "TESTS_USE_EXTERNAL_SERVICES=1" in refused.stderr
