"""The replica launcher's process handling (proc.start) and its import rules, without uvicorn."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from taskscale import proc
from taskscale.errors import CommandFailed
from taskscale.targets.local import preload


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


def test_launcher_preloads_like_a_from_import(tmp_path: Path) -> None:
    """``x:y`` imports the submodule x.y only when x has no attribute y (as ``from x import y``
    would): a same-named function is never replaced by its submodule."""
    package = tmp_path / "pkg"
    package.mkdir()
    marker = "import pathlib; pathlib.Path(__file__).with_suffix('.imported').touch()\n"
    (package / "__init__.py").write_text("def func():\n    return 1\n")
    (package / "func.py").write_text(marker)
    (package / "sub.py").write_text(marker)
    started = proc.start(
        [sys.executable, "-c", preload._LAUNCHER, "pkg:func", "pkg:sub", "missing:x"],
        cwd=tmp_path,
        timeout=30,
    )
    with started:
        # No input: nothing to fork, the launcher exits cleanly after its imports.
        assert started.finish("").stdout == ""
    assert (package / "sub.imported").exists()
    assert not (package / "func.imported").exists()
