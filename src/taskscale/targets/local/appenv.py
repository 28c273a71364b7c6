"""The app's Python interpreter, environment variables and command lines on the local target.

Interpreter choice: ``[stack] python`` when set; else taskscale's own interpreter when it can
import everything the generated app needs (true after ``pip install 'taskscale[app]'``); else a
private ``.taskscale/venv`` created once with ``pip install -e <project>``. The verdict is cached
in ``.taskscale/python.json`` (keyed by interpreter and pyproject.toml mtimes), so a warm ``up``
does not pay for the check.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from taskscale import proc
from taskscale.config import Project
from taskscale.errors import CommandFailed, ConfigError, MissingBinary
from taskscale.targets.local import kafka
from taskscale.targets.local.nginx import APP_KEEPALIVE_TIMEOUT
from taskscale.targets.local.supervisor import GRACEFUL_SHUTDOWN
from taskscale.targets.model import StepCallback

# Top-level modules the generated app imports at run time.
REQUIRED_MODULES = (
    "fastapi",
    "uvicorn",
    "sqlalchemy",
    "psycopg",
    "alembic",
    "redis",
    "pydantic_settings",
    "orjson",
    "prometheus_client",
    # --auth jwt projects (the default)
    "jwt",
    "argon2",
    "python_multipart",
    "email_validator",
)
VENV_TIMEOUT = 120.0
PIP_TIMEOUT = 1200.0

_CHECK_SCRIPT = (
    "import importlib.util, sys\n"
    "missing = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]\n"
    "print(' '.join(missing))\n"
)


def missing_modules(python: str) -> list[str]:
    """Modules of REQUIRED_MODULES that ``python`` cannot import (no import is executed)."""
    result = proc.run([python, "-c", _CHECK_SCRIPT, *REQUIRED_MODULES], timeout=60)
    return result.stdout.split()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _cache_key(project: Project, python: str) -> str:
    return f"{python}|{_mtime(Path(python))}|{_mtime(project.root / 'pyproject.toml')}"


def resolve_python(project: Project, on_step: StepCallback) -> str:
    """The interpreter that runs the app's replicas, worker and migrations."""
    configured = project.config.stack.python
    if configured:
        path = Path(configured).expanduser()
        if not path.is_absolute():
            path = project.root / path
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(f"[stack] python = {configured!r} is not an executable file")
        return os.fspath(path)

    cache_file = project.state_dir / "python.json"
    try:
        cached = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = {}
    python = cached.get("python")
    if isinstance(python, str) and cached.get("key") == _cache_key(project, python):
        return python

    on_step("checking the Python environment")
    chosen = sys.executable
    if missing_modules(chosen):
        chosen = _ensure_venv(project, on_step)
    project.state_dir.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(
        json.dumps({"python": chosen, "key": _cache_key(project, chosen)}), encoding="utf-8"
    )
    return chosen


def _ensure_venv(project: Project, on_step: StepCallback) -> str:
    venv = project.state_dir / "venv"
    python = venv / "bin" / "python"
    if python.exists() and not missing_modules(os.fspath(python)):
        return os.fspath(python)
    if not python.exists():
        on_step(f"creating {venv} (once)")
        proc.run([sys.executable, "-m", "venv", venv], timeout=VENV_TIMEOUT)
    on_step("installing the app's requirements into .taskscale/venv (once; takes a minute)")
    log = project.state_dir / "logs" / "pip.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = proc.run(
            [python, "-m", "pip", "install", "--disable-pip-version-check", "-e", project.root],
            timeout=PIP_TIMEOUT,
        )
    except CommandFailed as exc:
        raise CommandFailed(
            f"could not install the app's requirements into {venv}",
            detail=exc.detail,
            hint="check network access to PyPI, or set [stack] python in taskscale.toml",
        ) from exc
    log.write_text(result.stdout + result.stderr, encoding="utf-8")
    still_missing = missing_modules(os.fspath(python))
    if still_missing:
        raise MissingBinary(
            f"{venv} still lacks: {', '.join(still_missing)}",
            hint="add them to the project's pyproject.toml dependencies",
        )
    return os.fspath(python)


def app_env(
    project: Project,
    *,
    instance_id: str,
    database_url: str,
    replica_urls: list[str] | None = None,
) -> dict[str, str]:
    """Environment of a replica, the worker or the migrations.

    The project's ``.env`` first, then connection URLs built from taskscale.toml's ports (so a
    changed port takes effect without editing .env), then the per-process settings.
    ``replica_urls`` (replication on) are the standbys reads go to. The broker is the
    project's: a ``kafka`` project gets the stack's Tansu broker (``kafka``).
    """
    cfg = project.config
    credentials = project.credentials()
    env = dict(os.environ)
    env.update(project.secrets())
    env.update(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": (f"redis://:{credentials.redis_password}@127.0.0.1:{cfg.ports.redis}/0"),
            "BROKER": cfg.project.broker,
            "INSTANCE_ID": instance_id,
            "DB_POOL_SIZE": str(cfg.postgres.pool_size),
            "CACHE_TTL_SECONDS": str(cfg.cache.ttl_seconds),
            # The worker's /healthz, /readyz and /metrics ([ports] metrics: compose publishes
            # Prometheus there; the local target has no Prometheus).
            "WORKER_HOST": "127.0.0.1",
            "WORKER_PORT": str(cfg.ports.metrics),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if cfg.project.broker == "kafka":
        env.update(kafka.app_env(cfg.ports.kafka))
    if replica_urls is not None:
        env["DATABASE_REPLICA_URLS"] = ",".join(replica_urls)
    return env


def replica_argv(python: str, port: int) -> list[str]:
    return [
        python, "-m", "uvicorn", "app.main:app",
        "--host", "127.0.0.1",
        "--port", str(port),
        # Longer than nginx's upstream keepalive_timeout: nginx closes idle connections first.
        "--timeout-keep-alive", str(APP_KEEPALIVE_TIMEOUT),
        "--timeout-graceful-shutdown", str(GRACEFUL_SHUTDOWN),
        # nginx-access.log has one line per request with the replica's address; a second
        # access log per replica would only cost throughput.
        "--no-access-log",
    ]  # fmt: skip


def worker_argv(python: str) -> list[str]:
    return [python, "-m", "app.worker"]


def migrations_argv(python: str) -> list[str]:
    return [python, "-m", "alembic", "upgrade", "head"]
