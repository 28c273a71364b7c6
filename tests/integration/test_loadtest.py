"""`taskscale loadtest` against real servers on loopback (a few 5-10 s runs).

Own servers (nginx static 200, a uvicorn app with an injectable delay) cover the run, the count
reconciliation, SLO exit codes and the baseline comparison; the local stack covers a real-app
run and the replica sweep.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CliRunner
from tests.integration.loadtest_servers import DelayApp, StaticNginx, write_scenario

pytestmark = pytest.mark.slow

FILES = {
    "report.json",
    "report.md",
    "report.html",
    "junit.xml",
    "histograms.json",
    "locust_stats.csv",
    "locust_stats_history.csv",
    "locust_failures.csv",
}


def _load(run_dir: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((run_dir / "report.json").read_text())
    return data


def test_ten_second_run_writes_everything_and_counts_match_the_server(
    run_cli: CliRunner, tmp_path: Path
) -> None:
    scenario = write_scenario(tmp_path / "scenario.py")
    run_dir = tmp_path / "run"
    with StaticNginx(tmp_path / "nginx") as server:
        result = run_cli(
            "loadtest",
            "--host",
            server.url,
            "--scenario",
            str(scenario),
            "--users",
            "8",
            "--spawn-rate",
            "8",
            "--duration",
            "10s",
            "--out",
            str(run_dir),
            "--slo",
            "p99<2s",
            "--slo",
            "errors<1%",
            "--json",
        )
        assert result.exit_code == 0, result.stderr
        served = server.requests_logged()
    assert {p.name for p in run_dir.iterdir()} >= FILES
    data: Any = json.loads(result.stdout)
    assert data == _load(run_dir)
    assert data["schema_version"] == 1
    total = data["total"]
    assert isinstance(total, dict)
    assert total["requests"] == served > 1000  # what the server saw, exactly
    assert total["failures"] == 0
    assert set(total["latency_ms"]) >= {"p50", "p90", "p95", "p99", "p999", "max"}
    endpoints = {(e["method"], e["name"]): e for e in data["endpoints"]}
    assert set(endpoints) == {("GET", "/tasks/?limit=5"), ("POST", "/tasks/")}
    assert sum(e["requests"] for e in endpoints.values()) == total["requests"]
    timeline = data["timeline"]
    assert isinstance(timeline, list) and 9 <= len(timeline) <= 13
    assert sum(p["rps"] for p in timeline) == total["requests"]
    assert [s["passed"] for s in data["slo"]] == [True, True]
    env = data["environment"]
    assert isinstance(env, dict) and env["target"] == "external" and env["cpu_count"] >= 1
    generator = data["generator"]
    assert isinstance(generator, dict) and len(generator["cpu_percent_samples"]) >= 5
    html = (run_dir / "report.html").read_text()
    for tag in re.findall(r"<(?:script|link)\b[^>]*>", html, re.I):
        assert not re.search(r"\b(?:src|href)\s*=", tag, re.I), tag
    assert "| TOTAL |" in (run_dir / "report.md").read_text()
    ET.parse(run_dir / "junit.xml")

    # `taskscale report` re-renders the same numbers from the stored histograms.
    (run_dir / "report.html").unlink()
    again = run_cli("report", str(run_dir), "--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["total"] == total
    assert (run_dir / "report.html").is_file()


def test_failing_slo_exits_1_after_writing_reports_and_rate_paces_the_load(
    run_cli: CliRunner, tmp_path: Path
) -> None:
    scenario = write_scenario(tmp_path / "scenario.py")
    with StaticNginx(tmp_path / "nginx") as server:
        result = run_cli(
            "loadtest",
            "--host",
            server.url,
            "--scenario",
            str(scenario),
            "-u",
            "5",
            "-r",
            "5",
            "-d",
            "5s",
            "--rate",
            "100",
            "--out",
            str(tmp_path / "run"),
            "--slo",
            "p95<10s",
            "--slo",
            "rps>1000000",
        )
    assert result.exit_code == 1
    assert "1 SLO gate(s) failed: rps>1000000" in result.stderr
    junit = ET.parse(tmp_path / "run" / "junit.xml").getroot()
    assert junit.get("failures") == "1"
    assert "FAIL" in result.stdout  # the terminal shows the gate table
    # Open model: 100 req/s in total, whatever the server could do (nginx does thousands).
    report = _load(tmp_path / "run")
    total = report["total"]
    assert isinstance(total, dict) and 80 <= total["rps"] <= 110, total


def test_baseline_comparison_flags_an_injected_slowdown(run_cli: CliRunner, tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path / "scenario.py")
    common = ["--scenario", str(scenario), "-u", "4", "-r", "4", "-d", "5s", "--processes", "1"]
    with DelayApp(tmp_path / "fast") as app:
        result = run_cli("loadtest", "--host", app.url, *common, "--out", str(tmp_path / "base"))
        assert result.exit_code == 0, result.stderr
    with DelayApp(tmp_path / "slow", delay_ms=25) as app:
        result = run_cli(
            "loadtest",
            "--host",
            app.url,
            *common,
            "--out",
            str(tmp_path / "slow-run"),
            "--baseline",
            str(tmp_path / "base" / "report.json"),
            "--json",
        )
        assert result.exit_code == 0, result.stderr
    comparison = json.loads(result.stdout)["baseline"]
    flagged = {(r["scope"], r["metric"]) for r in comparison["rows"] if r["regression"]}
    assert {("total", "p50"), ("total", "p95"), ("total", "rps")} <= flagged
    assert "REGRESSION" in (tmp_path / "slow-run" / "report.md").read_text()
    assert "REGRESSION" in (tmp_path / "slow-run" / "report.html").read_text()


def test_broken_scenario_is_one_clear_error_with_locusts_output(
    run_cli: CliRunner, tmp_path: Path
) -> None:
    scenario = tmp_path / "broken.py"
    scenario.write_text("from locust import FastHttpUser\ndef broken(:\n")
    with StaticNginx(tmp_path / "nginx") as server:
        result = run_cli(
            "loadtest",
            "--host",
            server.url,
            "--scenario",
            str(scenario),
            "-d",
            "3s",
            "--out",
            str(tmp_path / "run"),
        )
        assert server.requests_logged() == 0
    assert result.exit_code == 4
    assert "error: locust recorded no requests" in result.stderr
    assert "SyntaxError" in result.stderr  # the tail of Locust's log follows the error line


def test_two_multi_process_runs_at_once_each_count_only_their_own_requests(
    tmp_path: Path,
) -> None:
    """Locust's master and its forked workers meet on a port (by default 5557 for every run):
    two runs at once on one machine must neither fail to bind nor share workers."""
    scenario = write_scenario(tmp_path / "scenario.py")
    with StaticNginx(tmp_path / "nginx") as server:
        common = ["--scenario", str(scenario), "-u", "4", "-r", "4", "-d", "6s", "--json"]
        command = [sys.executable, "-m", "taskscale", "loadtest", "--host", server.url, *common]
        runs = [
            subprocess.Popen(
                [*command, "--processes", "2", "--out", str(tmp_path / f"run{i}")],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in (1, 2)
        ]
        outputs = [run.communicate(timeout=120) for run in runs]
        served = server.requests_logged()
    for run, (stdout, stderr) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, stderr
        data = json.loads(stdout)
        assert data["total"]["requests"] > 100
        assert data["generator"]["processes"] == 2
    totals = [json.loads(stdout)["total"]["requests"] for stdout, _ in outputs]
    assert sum(totals) == served
