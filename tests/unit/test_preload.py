"""The replica launcher's process handling (proc.start), without uvicorn."""

from __future__ import annotations

import sys

import pytest

from taskscale import proc
from taskscale.errors import CommandFailed


def test_started_command_gets_its_input_later() -> None:
    script = "import sys; print(sys.stdin.read().upper())"
    with proc.start([sys.executable, "-c", script], timeout=30) as started:
        result = started.finish("ready")
    assert result.stdout.strip() == "READY"


def test_started_command_left_unfinished_is_killed() -> None:
    with proc.start([sys.executable, "-c", "import time; time.sleep(60)"], timeout=60) as started:
        pid = started.pid
        assert proc.pid_alive(pid)
    assert not proc.pid_alive(pid)


def test_started_command_is_bounded_by_its_timeout() -> None:
    with (
        proc.start([sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5) as started,
        pytest.raises(CommandFailed, match="timed out"),
    ):
        started.finish("")
    assert not proc.pid_alive(started.pid)
