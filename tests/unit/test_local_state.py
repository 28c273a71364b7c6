"""state.json: round trip, atomic writes, stale pids (dead or reused) and the lock."""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from taskscale.errors import ConfigError, TargetError
from taskscale.targets.local.state import ServiceRecord, StackState, StateFile
from tests.conftest import dead_pid


def _record(name: str = "app-1", pid: int | None = None, **kw: object) -> ServiceRecord:
    return ServiceRecord(
        name=name,
        kind="app",
        pid=pid if pid is not None else os.getpid(),
        port=8100,
        log="/tmp/x.log",
        argv=["python", "-m", "uvicorn"],
        **kw,  # type: ignore[arg-type]
    )


def test_round_trip_and_no_tmp_file_left(tmp_path: Path) -> None:
    state_file = StateFile(tmp_path / ".taskscale")
    state = StackState({"app-1": _record(), "nginx": _record("nginx")})
    state_file.save(state)
    loaded = state_file.load()
    assert loaded.services.keys() == {"app-1", "nginx"}
    assert loaded.services["app-1"] == state.services["app-1"]
    assert [p.name for p in (tmp_path / ".taskscale").iterdir()] == ["state.json"]


def test_missing_file_is_an_empty_stack_and_empty_state_removes_it(tmp_path: Path) -> None:
    state_file = StateFile(tmp_path)
    assert state_file.load().services == {}
    state_file.save(StackState({"a": _record("a")}))
    state_file.save(StackState())
    assert not state_file.path.exists()


def test_corrupt_file_is_a_config_error(tmp_path: Path) -> None:
    state_file = StateFile(tmp_path)
    state_file.path.write_text("{not json")
    with pytest.raises(ConfigError, match="corrupt"):
        state_file.load()


def test_live_process_with_matching_start_time_is_alive() -> None:
    record = ServiceRecord.spawned("me", "app", os.getpid(), None, Path("/tmp/x"), ["x"])
    assert record.proc_start is not None
    assert record.alive()


def test_dead_pid_is_stale() -> None:
    assert not _record(pid=dead_pid()).alive()


def test_reused_pid_is_stale() -> None:
    # Our pid, but recorded with another start time: the pid now belongs to someone else.
    start = psutil.Process().create_time()
    assert not _record(proc_start=start - 3600).alive()


def test_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    state_file = StateFile(tmp_path)
    with (
        state_file.locked(),
        pytest.raises(TargetError, match=f"pid {os.getpid()}"),
        StateFile(tmp_path).locked(),
    ):
        pass
    with state_file.locked():  # released
        pass
