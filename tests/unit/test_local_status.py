"""LocalTarget.status on recorded state, without starting anything: dead services and notes."""

from __future__ import annotations

from pathlib import Path

from taskscale.config import load_project
from taskscale.targets.local import LocalTarget
from taskscale.targets.local.state import ServiceRecord, StackState, StateFile
from tests.cli.conftest import write_minimal_project
from tests.conftest import dead_pid


def test_dead_service_shows_its_log_tail_and_a_note(tmp_path: Path) -> None:
    project = load_project(write_minimal_project(tmp_path / "p"))
    log = project.state_dir / "logs" / "app-1.log"
    log.parent.mkdir(parents=True)
    log.write_text("starting\nTraceback: boom\n")
    record = ServiceRecord("app-1", "app", dead_pid(), 8100, str(log), ["uvicorn"])
    StateFile(project.state_dir).save(StackState({"app-1": record}))

    status = LocalTarget(project).status()

    [app] = status.services
    assert (app.state, app.healthy, app.uptime_seconds) == ("dead", False, None)
    assert app.log_tail == "starting\nTraceback: boom"
    assert any("dead: app-1" in note for note in status.notes)
    assert any("max_connections" in note for note in status.notes)
    data = status.to_dict()
    assert data["services"][0]["kind"] == "app" and data["healthy"] is False


def test_nothing_recorded_is_not_running(tmp_path: Path) -> None:
    project = load_project(write_minimal_project(tmp_path / "p"))
    status = LocalTarget(project).status()
    assert status.services == [] and not status.running
    assert status.notes == ["not running: start it with `taskscale up`"]
