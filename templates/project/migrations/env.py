"""Alembic environment: DATABASE_URL from the environment, sync psycopg 3 driver.

Upgrades run under a PostgreSQL advisory lock, so several runners can start at once (the
migrate init container of every app and worker pod in Kubernetes, a compose `migrate` next to a
manual one): one migrates, the others wait for it, then find the schema at head and do nothing.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool, text

from app.core.config import Settings
from app.models import metadata

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = metadata
# pg_advisory_xact_lock key of the migrations (any constant the app uses for nothing else).
MIGRATION_LOCK = 7_245_311_908


def _url() -> str:
    return config.attributes.get("database_url") or Settings().database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
        with context.begin_transaction():
            # Held until this transaction commits; the current revision is read after it.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
