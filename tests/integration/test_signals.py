"""Ctrl-C and SIGTERM during a real ``taskscale loadtest``: exit 130 / 143 with one line, and
Locust stopped with it, against a static nginx on loopback."""

from __future__ import annotations

import signal
from pathlib import Path

import psutil
import pytest

from taskscale import proc
from tests.cli.test_signals import EXPECTED, interrupt, start_cli
from tests.integration.loadtest_servers import StaticNginx, write_scenario

pytestmark = pytest.mark.slow


def _locust_processes(cli: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(cli).children(recursive=True)
    except psutil.Error:
        return []
    return [c for c in children if "locust" in " ".join(c.cmdline())]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_loadtest_interrupted_stops_locust(tmp_path: Path, sig: signal.Signals) -> None:
    scenario = write_scenario(tmp_path / "scenario.py")
    with StaticNginx(tmp_path / "nginx") as server:
        process = start_cli(
            "loadtest", "--host", server.url, "-s", str(scenario), "-d", "60s", "-u", "2",
            "--processes", "1", "--out", str(tmp_path / "run"),
        )  # fmt: skip
        try:
            # Locust runs and load arrives before the signal. (One process: --processes N
            # binds Locust's fixed master port, which parallel test runs would share.)
            assert proc.poll_until(lambda: len(_locust_processes(process.pid)) >= 1, 30)
            assert proc.poll_until(lambda: server.requests_logged() > 0, 30)
            locust = _locust_processes(process.pid)
        finally:
            code, stderr = interrupt(process, sig)
    assert (code, stderr) == (EXPECTED[sig][0], [EXPECTED[sig][1]])
    assert all(not proc.pid_alive(p.pid) for p in locust), "Locust outlived the command"
