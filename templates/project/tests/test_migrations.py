"""Alembic: upgrade head -> downgrade base -> upgrade head, concurrent upgrades, and the model
matches the migration."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from app.core.config import libpq_url
from app.models import metadata
from tests.conftest import PROJECT_ROOT, alembic_config


def tables(database_url: str) -> set[str]:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def test_upgrade_downgrade_upgrade(database_url: str) -> None:
    config = alembic_config(database_url)
    app_tables = {"tasks", "outbox", "idempotency_keys", "notifications"}
    assert app_tables <= tables(database_url)
    command.downgrade(config, "base")
    assert tables(database_url) & app_tables == set()
    command.upgrade(config, "head")
    assert app_tables <= tables(database_url)


def test_concurrent_upgrades_take_turns(database_url: str) -> None:
    """Every Kubernetes pod runs `alembic upgrade head` before it serves: runs that start together
    (separate processes, as pods are) serialize on the advisory lock in migrations/env.py instead
    of creating the tables twice."""
    command.downgrade(alembic_config(database_url), "base")
    env = {**os.environ, "DATABASE_URL": database_url}
    argv = [sys.executable, "-m", "alembic", "upgrade", "head"]
    runs = [
        subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(3)
    ]
    for run in runs:
        output, _ = run.communicate(timeout=120)
        assert run.returncode == 0, output.decode(errors="replace")[-2000:]
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        versions = conn.execute("SELECT count(*) FROM alembic_version").fetchone()
    assert versions == (1,)
    assert {"tasks", "outbox", "idempotency_keys", "notifications"} <= tables(database_url)


def test_models_match_migrations(database_url: str) -> None:
    engine = create_engine(alembic_config(database_url).attributes["database_url"])
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    finally:
        engine.dispose()
    assert diff == []
