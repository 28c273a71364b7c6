"""`taskscale loadtest` error paths: one line, the right exit code, and no load sent."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.cli.conftest import free_port, write_minimal_project
from tests.conftest import CliRunner, one_error_line


class _Counting(BaseHTTPRequestHandler):
    hits: list[str] = []
    status = 200

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        self.send_response(self.status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *_: object) -> None:
        return None


@pytest.fixture
def counting_server() -> Iterator[tuple[str, type[_Counting]]]:
    handler = type("Handler", (_Counting,), {"hits": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def scenario(tmp_path: Path) -> str:
    path = tmp_path / "scenario.py"
    path.write_text(
        "from locust import FastHttpUser, task\n\n\nclass U(FastHttpUser):\n"
        "    @task\n    def get(self) -> None:\n        self.client.get('/')\n"
    )
    return str(path)


def test_bad_slo_exits_2_before_any_load(
    run_cli: CliRunner, counting_server: tuple[str, type[_Counting]], tmp_path: Path
) -> None:
    url, handler = counting_server
    result = run_cli(
        "loadtest",
        "--host",
        url,
        "--slo",
        "p95<200ms",
        "--slo",
        "p95<<2",
        "--out",
        str(tmp_path / "run"),
    )
    assert result.exit_code == 2
    assert "'p95<<2'" in one_error_line(result.stderr)
    assert handler.hits == []  # not even the readiness check
    assert not (tmp_path / "run").exists()


def test_unreachable_host_is_one_clear_line(
    run_cli: CliRunner, tmp_path: Path, scenario: str
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli(
        "loadtest", "--host", url, "-d", "5s", "-s", scenario, "--out", str(tmp_path / "run")
    )
    assert result.exit_code == 6
    line = one_error_line(result.stderr)
    assert f"{url}/readyz is not reachable" in line and "no load was sent" in line
    assert not (tmp_path / "run").exists()


def test_host_not_ready_is_refused(
    run_cli: CliRunner, counting_server: tuple[str, type[_Counting]], scenario: str
) -> None:
    url, handler = counting_server
    handler.status = 503
    result = run_cli("loadtest", "--host", url, "-d", "5s", "-s", scenario)
    assert result.exit_code == 6
    assert "answered 503" in one_error_line(result.stderr)
    assert handler.hits == ["/readyz"]


@pytest.mark.parametrize("duration", ["10x", "0s", "-1m", "forever"])
def test_bad_duration_exits_2(run_cli: CliRunner, duration: str) -> None:
    result = run_cli("loadtest", "--host", "http://127.0.0.1:1", "--duration", duration)
    assert result.exit_code == 2
    assert "invalid duration" in one_error_line(result.stderr)


@pytest.mark.parametrize("value", ["1,,2", "0,1", "a", "2,2"])
def test_bad_sweep_list_exits_2(run_cli: CliRunner, value: str, tmp_path: Path) -> None:
    project = write_minimal_project(tmp_path / "mini")
    result = run_cli("loadtest", "-p", str(project), "--sweep-replicas", value)
    assert result.exit_code == 2
    assert "--sweep-replicas" in one_error_line(result.stderr)


def test_sweep_needs_a_project(
    run_cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_cli("loadtest", "--host", "http://127.0.0.1:1", "--sweep-replicas", "1,2")
    assert result.exit_code == 2
    assert "cannot use --host" in one_error_line(result.stderr)
    result = run_cli("loadtest", "--sweep-replicas", "1,2")
    assert result.exit_code == 3  # no taskscale.toml here
    assert "not inside a taskscale project" in one_error_line(result.stderr)


def test_stack_not_running_is_refused(run_cli: CliRunner, tmp_path: Path, scenario: str) -> None:
    project = write_minimal_project(tmp_path / "mini")
    result = run_cli("loadtest", "-p", str(project), "-d", "5s", "-s", scenario)
    assert result.exit_code == 6
    assert "stack is not running" in one_error_line(result.stderr)
