"""The OpenAPI document tells the truth: schemathesis fuzzes every route of the running API
(valid and invalid input, with a valid bearer token where the API wants one) and finds no 5xx
and no response, 4xx included, that does not match the schema documented for it.

The same check runs against a deployed stack by hand:

    schemathesis run http://127.0.0.1:8080/openapi.json \\
        --checks not_a_server_error,response_schema_conformance -H "Authorization: Bearer $TOKEN"
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import PROJECT_ROOT, SERVER_ENV, server_credentials
from tests.services import free_port, wait_until


def _ready(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def running_api(database_url: str, redis_url: str, tmp_path: Path) -> Iterator[str]:
    """The app served by uvicorn on a free loopback port, against the test database and Redis."""
    port = free_port()
    env = {
        **os.environ,
        **SERVER_ENV,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "BROKER": "redis",
        "LOG_LEVEL": "WARNING",
    }
    argv = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)]
    with (tmp_path / "uvicorn.log").open("wb") as log:
        server = subprocess.Popen([*argv, "--no-access-log"], cwd=PROJECT_ROOT, env=env, stdout=log, stderr=log)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(base_url), 30, "uvicorn")
        yield base_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def test_schemathesis_finds_no_server_error_and_no_undocumented_response(running_api: str) -> None:
    executable = shutil.which("schemathesis", path=os.path.dirname(sys.executable)) or shutil.which("schemathesis")
    assert executable, "schemathesis is missing: pip install -e '.[test]'"
    headers = [arg for name, value in server_credentials(running_api).items() for arg in ("-H", f"{name}: {value}")]
    argv = [
        executable,
        "run",
        f"{running_api}/openapi.json",
        "--checks",
        "not_a_server_error,response_schema_conformance",
        *headers,
        "--max-examples",
        os.environ.get("CONTRACT_MAX_EXAMPLES", "25"),
        "--seed",
        "1",
        "--request-timeout",
        "10",
        "--no-color",
        "--generation-database",
        "none",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout.split("SUMMARY")[-1]
