"""Render-time checks of compose.yaml: `docker compose config`, run from the project's root with
no flag (as a user would), accepts it for both brokers and with replication on, and the stack has
the shape issues 6 and 15 ask for."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from taskscale.config import read_env_file
from taskscale.errors import MissingBinary
from taskscale.targets.compose.engine import compose_command

LONG_RUNNING = {"postgres", "postgres-standby", "redis", "kafka", "app", "worker", "nginx"}


def _compose() -> tuple[str, ...]:
    try:
        return compose_command()
    except MissingBinary as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the compose checks: {exc}")
        pytest.skip(str(exc))


def _config(project: Path, *profiles: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    argv = [*_compose()]  # Compose finds compose.yaml and .env in the working directory
    for profile in profiles:
        argv += ["--profile", profile]
    done = subprocess.run(
        [*argv, "config", "--format", "json"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("TASKSCALE_")} | (env or {}),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


@pytest.fixture(scope="module", params=["redis", "kafka"])
def project(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from taskscale.cli import main

    out = tmp_path_factory.mktemp(f"compose-{request.param}")
    assert (
        main(["new", "cfg", "--broker", request.param, "--output-dir", str(out), "--no-git"]) == 0
    )
    return out / "cfg"


def test_config_accepts_both_brokers_with_replication(project: Path) -> None:
    broker = "kafka" if "kafka" in project.parent.name else "redis"
    plain = _config(project)
    services = set(plain["services"])
    expected = {"postgres", "redis", "migrate", "app", "worker", "nginx"}
    assert expected | ({"kafka"} if broker == "kafka" else set()) == services
    replicated = _config(project, "replication")
    assert set(replicated["services"]) == services | {"postgres-standby"}
    observed = _config(project, "replication", "observability")
    assert {"prometheus", "grafana", "postgres-exporter"} <= set(observed["services"])
    app_env = replicated["services"]["app"]["environment"]
    assert app_env["BROKER"] == broker
    assert app_env["DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in app_env["DATABASE_URL"]


def test_shape_of_the_stack(project: Path) -> None:
    services = _config(project, "replication")["services"]
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert published == {"nginx"}, "nginx must be the only public port"
    observed = _config(project, "replication", "observability")["services"]
    for name in ("prometheus", "postgres-exporter", "grafana"):
        svc = observed[name]
        assert svc["healthcheck"]["test"] and svc["init"] is True, name
        assert svc["deploy"]["resources"]["limits"], name
        assert all(port["host_ip"] == "127.0.0.1" for port in svc.get("ports", [])), name
    (port,) = services["nginx"]["ports"]
    assert port["host_ip"] == "127.0.0.1" and port["target"] == 8080
    for name, svc in services.items():
        if name in LONG_RUNNING:
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
            assert svc.get("init") is True, name
            assert svc["deploy"]["resources"]["limits"], name
    for name in ("app", "worker", "nginx", "postgres-standby"):
        conditions = {dep["condition"] for dep in services[name]["depends_on"].values()}
        assert conditions <= {"service_healthy", "service_completed_successfully"}, name
    assert services["app"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["app"]["read_only"] is True
    assert services["app"]["cap_drop"] == ["ALL"]


def test_images_are_official_by_default_and_overridable(project: Path) -> None:
    services = _config(project)["services"]
    assert services["postgres"]["image"] == "postgres:18"  # [postgres] version
    assert services["app"]["image"] == "cfg-app:0.1.0"  # [images] app: the project's version
    assert services["redis"]["image"] == "redis:7"
    assert services["nginx"]["image"].startswith("nginx:")
    assert services["app"]["build"]["args"]["BASE_IMAGE"].startswith("python:")
    overridden = _config(
        project,
        env={
            "TASKSCALE_POSTGRES_IMAGE": "mirror/pg:1",
            "TASKSCALE_REDIS_IMAGE": "mirror/redis:1",
            "TASKSCALE_NGINX_IMAGE": "mirror/nginx:1",
            "TASKSCALE_PYTHON_IMAGE": "mirror/python:1",
            "TASKSCALE_APP_IMAGE": "mirror/app:1",
        },
    )["services"]
    assert overridden["postgres"]["image"] == "mirror/pg:1"
    assert overridden["redis"]["image"] == "mirror/redis:1"
    assert overridden["nginx"]["image"] == "mirror/nginx:1"
    assert overridden["app"]["image"] == "mirror/app:1"
    assert overridden["app"]["build"]["args"]["BASE_IMAGE"] == "mirror/python:1"


def test_secrets_come_from_the_env_file(project: Path) -> None:
    secrets = read_env_file(project / ".env")
    services = _config(project)["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == secrets["POSTGRES_PASSWORD"]
    assert secrets["REDIS_PASSWORD"] in services["app"]["environment"]["REDIS_URL"]
    assert "change-me" not in json.dumps(services)


def test_without_secrets_config_names_the_missing_one(project: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("# no secrets\n")
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES", "REDIS", "REPL"))}
    done = subprocess.run(
        [*_compose(), "-f", str(project / "compose.yaml"), "--env-file", str(empty), "config",
         "-q"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path, env=keep,
    )  # fmt: skip
    assert done.returncode != 0
    assert "in .env" in done.stderr


def test_dockerfile_runs_as_non_root_with_healthcheck(project: Path) -> None:
    text = (project / "deploy" / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:" in text
    assert "USER 10001" in text and "HEALTHCHECK" in text
    assert 'CMD ["uvicorn"' in text  # exec form: uvicorn gets SIGTERM and drains
    ignored = (project / ".dockerignore").read_text().split()
    assert ".env" in ignored and ".taskscale" in ignored


def test_no_secret_on_a_command_line(project: Path) -> None:
    """Redis gets its password from a config file; `ps` and `docker inspect` show commands."""
    secrets = read_env_file(project / ".env")
    config = _config(project, "replication", "observability")
    for name, svc in config["services"].items():
        for field in ("command", "entrypoint"):
            text = json.dumps(svc.get(field) or [])
            for key in (
                "POSTGRES_PASSWORD",
                "REPLICATION_PASSWORD",
                "REDIS_PASSWORD",
                "SECRET_KEY",
            ):
                assert secrets[key] not in text, (name, field, key)
    redis = config["services"]["redis"]
    (mount,) = redis["configs"]
    assert mount["target"] in redis["command"]
    content = config["configs"][mount["source"]]["content"]
    assert content.strip() == f'requirepass "{secrets["REDIS_PASSWORD"]}"'


def test_postgres_keeps_its_data_in_the_per_major_layout(project: Path) -> None:
    """PostgreSQL 18+ images keep PGDATA under /var/lib/postgresql/MAJOR: the volume is mounted
    one level up, the same in the Kubernetes StatefulSets."""
    services = _config(project, "replication")["services"]
    (data,) = [v for v in services["postgres"]["volumes"] if v["type"] == "volume"]
    assert data["target"] == "/var/lib/postgresql"
    (tmpfs,) = [v for v in services["postgres-standby"]["volumes"] if v["type"] == "tmpfs"]
    assert tmpfs["target"] == "/var/lib/postgresql"
