"""Ctrl-C and SIGTERM sent to a real ``taskscale`` process: exit 130 / 143 with one line, and
nothing left running. Here ``logs -f`` (local target); the load tests are in
tests/integration/test_signals.py and tests/kubernetes/test_cluster_ops.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from taskscale import proc
from taskscale.targets.local.state import ServiceRecord, StackState, StateFile

EXPECTED = {
    signal.SIGINT: (130, "error: interrupted"),
    signal.SIGTERM: (143, "error: terminated (SIGTERM)"),
}


def start_cli(*args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "taskscale", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )


def first_line(process: subprocess.Popen[str], timeout: float = 30.0) -> str:
    """The first line the process prints on stdout (bounded wait)."""
    assert process.stdout is not None
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(process.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    assert got, "no output in time"
    return got[0]


def interrupt(process: subprocess.Popen[str], sig: signal.Signals) -> tuple[int, list[str]]:
    """Send ``sig``; the exit code and the non-empty stderr lines."""
    process.send_signal(sig)
    try:
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, [line for line in stderr.splitlines() if line.strip()]


@pytest.fixture
def running_logs(mini_project: Path) -> Path:
    """A stack record whose process is alive (this test process) and two logs."""
    logs = mini_project / ".taskscale" / "logs"
    logs.mkdir(parents=True)
    me = psutil.Process().create_time()
    state = StackState()
    for name in ("redis", "worker"):
        (logs / f"{name}.log").write_text(f"{name} ready\n")
        state.add(
            ServiceRecord(
                name, "redis", os.getpid(), None, str(logs / f"{name}.log"), ["x"], proc_start=me
            )
        )
    StateFile(mini_project / ".taskscale").save(state)
    return mini_project


@pytest.mark.parametrize(
    ("sig", "service"), [(signal.SIGINT, None), (signal.SIGTERM, "redis"), (signal.SIGINT, "redis")]
)
def test_logs_follow_ends_on_a_signal(
    running_logs: Path, sig: signal.Signals, service: str | None
) -> None:
    args = ["logs", "-f", "-p", str(running_logs), *([service] if service else [])]
    process = start_cli(*args)
    line = first_line(process)
    assert "ready" in line
    code, stderr = interrupt(process, sig)
    assert (code, stderr) == (EXPECTED[sig][0], [EXPECTED[sig][1]])
    # Every reader thread ended with the process: nothing of it is left.
    assert proc.wait_for_exit(process.pid, 5)
