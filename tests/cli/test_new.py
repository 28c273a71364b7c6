"""`taskscale new`: exit codes and one-line messages for every bad input, and no half-written
project left behind."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest

from tests.conftest import CliRunner, one_error_line


def test_creates_project_with_config_secrets_and_git(run_cli: CliRunner, tmp_path: Path) -> None:
    result = run_cli("new", "tasks-api", "--output-dir", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    project = tmp_path / "tasks-api"
    assert (project / "taskscale.toml").is_file()
    assert (project / ".git").is_dir()
    env = project / ".env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    text = env.read_text()
    assert "POSTGRES_PASSWORD=" in text and "change-me" not in text
    assert ".env" in (project / ".gitignore").read_text().split()
    assert (project / ".env.example").is_file()
    # No staging directory is left next to the project.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tasks-api"]


def test_secrets_differ_between_projects(run_cli: CliRunner, tmp_path: Path) -> None:
    assert run_cli("new", "one", "-o", str(tmp_path), "--no-git").exit_code == 0
    assert run_cli("new", "two", "-o", str(tmp_path), "--no-git").exit_code == 0
    one = (tmp_path / "one" / ".env").read_text()
    two = (tmp_path / "two" / ".env").read_text()
    assert one != two
    assert not (tmp_path / "one" / ".git").exists()


def test_json_output(run_cli: CliRunner, tmp_path: Path) -> None:
    result = run_cli("new", "svc", "-o", str(tmp_path), "--no-git", "--broker", "kafka", "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["path"] == str(tmp_path / "svc")
    assert "taskscale.toml" in data["files"] and ".env" in data["files"]
    assert 'broker = "kafka"' in (tmp_path / "svc" / "taskscale.toml").read_text()


@pytest.mark.parametrize(
    "name",
    ["Tasks", "tasks_api", "-tasks", "tasks-", "1tasks", "a--b", "x" * 64, "tâches", "a.b", ""],
)
def test_rejects_invalid_names(run_cli: CliRunner, tmp_path: Path, name: str) -> None:
    result = run_cli("new", "-o", str(tmp_path), "--", name)
    assert result.exit_code == 2
    line = one_error_line(result.stderr)
    assert "invalid project name" in line
    assert list(tmp_path.iterdir()) == []


def test_refuses_non_empty_directory_without_force(run_cli: CliRunner, tmp_path: Path) -> None:
    target = tmp_path / "tasks-api"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    result = run_cli("new", "tasks-api", "-o", str(tmp_path))
    assert result.exit_code == 2
    assert "already exists and is not empty" in one_error_line(result.stderr)
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]


def test_empty_existing_directory_is_fine(run_cli: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "tasks-api").mkdir()
    result = run_cli("new", "tasks-api", "-o", str(tmp_path), "--no-git")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "tasks-api" / "taskscale.toml").is_file()


def test_force_overwrites_but_keeps_user_files_and_secrets(
    run_cli: CliRunner, tmp_path: Path
) -> None:
    assert run_cli("new", "tasks-api", "-o", str(tmp_path), "--no-git").exit_code == 0
    project = tmp_path / "tasks-api"
    secrets_before = (project / ".env").read_text()
    (project / "taskscale.toml").write_text("garbage")
    (project / "notes.txt").write_text("mine")
    result = run_cli("new", "tasks-api", "-o", str(tmp_path), "--no-git", "--force")
    assert result.exit_code == 0, result.stderr
    assert "[project]" in (project / "taskscale.toml").read_text()
    assert (project / "notes.txt").read_text() == "mine"
    assert (project / ".env").read_text() == secrets_before


def test_auth_is_jwt_by_default_and_recorded(run_cli: CliRunner, tmp_path: Path) -> None:
    assert run_cli("new", "svc", "-o", str(tmp_path), "--no-git").exit_code == 0
    assert run_cli("new", "open", "-o", str(tmp_path), "--no-git", "--auth", "none").exit_code == 0
    assert 'auth = "jwt"' in (tmp_path / "svc" / "taskscale.toml").read_text()
    assert (tmp_path / "svc" / "app" / "api" / "routes" / "auth.py").is_file()
    assert 'auth = "none"' in (tmp_path / "open" / "taskscale.toml").read_text()
    assert not (tmp_path / "open" / "app" / "api" / "routes" / "auth.py").exists()
    assert not (tmp_path / "open" / "app" / "core" / "security.py").exists()


def test_bad_auth(run_cli: CliRunner, tmp_path: Path) -> None:
    result = run_cli("new", "svc", "-o", str(tmp_path), "--auth", "basic")
    assert result.exit_code == 2
    assert "--auth" in one_error_line(result.stderr)
    assert list(tmp_path.iterdir()) == []


def test_bad_broker(run_cli: CliRunner, tmp_path: Path) -> None:
    result = run_cli("new", "svc", "-o", str(tmp_path), "--broker", "rabbitmq")
    assert result.exit_code == 2
    assert "--broker" in one_error_line(result.stderr)
    assert list(tmp_path.iterdir()) == []


def test_output_dir_is_a_file(run_cli: CliRunner, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_cli("new", "svc", "-o", str(blocker))
    assert result.exit_code != 0
    one_error_line(result.stderr)
    assert blocker.read_text() == "x"


def test_failure_mid_render_leaves_nothing(
    run_cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_copyfile = shutil.copyfile
    calls = {"n": 0}

    def failing_copyfile(src: str, dst: str) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real_copyfile(src, dst)

    monkeypatch.setattr("taskscale.scaffold.render.shutil.copyfile", failing_copyfile)
    result = run_cli("new", "svc", "-o", str(tmp_path))
    assert result.exit_code != 0
    assert "No space left on device" in one_error_line(result.stderr)
    assert list(tmp_path.iterdir()) == []


def test_missing_name_and_unknown_command(run_cli: CliRunner) -> None:
    result = run_cli("new")
    assert result.exit_code == 2
    assert "Missing argument" in one_error_line(result.stderr)
    result = run_cli("bogus")
    assert result.exit_code == 2
    assert "No such command" in one_error_line(result.stderr)


def test_version_and_help(run_cli: CliRunner) -> None:
    from taskscale import __version__

    result = run_cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"taskscale {__version__}"
    result = run_cli()
    assert result.exit_code == 0
    assert "new" in result.stdout
