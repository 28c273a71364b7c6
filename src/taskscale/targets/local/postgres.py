"""PostgreSQL for the local target: initialise once, configure, start in the foreground, roles.

Running as root: the postmaster refuses to start with euid 0. Instead of creating a system user
and chown-ing the data dir (needs useradd, and breaks under /root, which is mode 0700, or
pytest's private tmp dirs), every PostgreSQL program is started under
``unshare --user --map-user=65534 --map-group=65534``: a new user namespace in which our own uid
(0 outside) appears as 65534. PostgreSQL sees a non-root euid, and the data dir, owned by the real
root, appears to be owned by itself, so its ownership and 0700 checks pass with no chown and no
path-traversal problem. Outside the namespace the processes are ordinary root processes with the
same pids, so we signal and watch them like any other service.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from taskscale import binaries, proc
from taskscale.binaries import PostgresBinaries
from taskscale.errors import CommandFailed
from taskscale.targets.local.state import runtime_dir

if TYPE_CHECKING:
    import psycopg
    from psycopg.rows import TupleRow

# psycopg is imported where it is used: ``up`` reaches this module before the replicas'
# launcher starts, and the import (~0.1 s) should run alongside the launcher, not before it.

SUPERUSER = "postgres"
SETTINGS_FILE = "taskscale.conf"


def user_namespace_prefix() -> list[str]:
    """The argv prefix that lets PostgreSQL run when we are root (see the module docstring)."""
    if os.geteuid() != 0:
        return []
    return [os.fspath(binaries.unshare()), "--user", "--map-user=65534", "--map-group=65534"]


def socket_dir_for(state_dir: Path) -> Path:
    """The unix socket directory: the stack's short runtime dir (see state.runtime_dir)."""
    return runtime_dir(state_dir)


@dataclass(frozen=True)
class PostgresSettings:
    port: int
    max_connections: int
    socket_dir: Path


def render_settings(settings: PostgresSettings) -> str:
    """``taskscale.conf``, included from postgresql.conf and rewritten by every ``up``."""
    return f"""\
# Managed by taskscale (rewritten by `taskscale up`); put your own settings in postgresql.conf.
listen_addresses = '127.0.0.1'
port = {settings.port}
unix_socket_directories = '{settings.socket_dir}'
unix_socket_permissions = 0700
max_connections = {settings.max_connections}
# Streaming replication (taskscale replicate) can add standbys without a restart.
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = '256MB'
hot_standby = on
# pg_rewind (replicate rejoin) needs hint bits WAL-logged when checksums are off.
wal_log_hints = on
password_encryption = 'scram-sha-256'
log_destination = 'stderr'
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
"""


def remove_stale_lock_files(argv: list[str], socket_dir: Path, port: int, dead_pid: int) -> int:
    """Before the supervisor process starts a killed postmaster again: ``postmaster.pid`` and
    the socket's ``.s.PGSQL.<port>.lock`` name the dead pid, and while init has not reaped
    that zombie PostgreSQL takes it for a running postmaster and refuses to start ("lock file
    already exists"). Each is removed only when it names ``dead_pid``, after the dead
    postmaster's backends were killed with its process group (so nothing still uses its shared
    memory). How many were removed."""
    try:
        data_dir = Path(argv[argv.index("-D") + 1])
    except (ValueError, IndexError):
        return 0
    removed = 0
    for lock in (data_dir / "postmaster.pid", socket_dir / f".s.PGSQL.{port}.lock"):
        try:
            recorded = int(lock.read_text(encoding="ascii", errors="replace").split()[0])
        except (ValueError, IndexError, OSError):
            continue
        if recorded == dead_pid:
            lock.unlink(missing_ok=True)
            removed += 1
    return removed


class LocalPostgres:
    """One PostgreSQL cluster: ``<state>/postgres/data`` for the primary."""

    def __init__(
        self,
        bins: PostgresBinaries,
        state_dir: Path,
        settings: PostgresSettings,
        *,
        root: Path | None = None,
    ) -> None:
        """``root`` holds ``data/`` (and the superuser password file); standbys pass their own."""
        self.bins = bins
        self.state_dir = state_dir
        self.settings = settings
        self.root = root if root is not None else state_dir / "postgres"
        self.data_dir = self.root / "data"

    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def ensure_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.settings.socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.settings.socket_dir, 0o700)

    def initdb(self, log_path: Path, timeout: float) -> None:
        """Create the cluster once: scram-sha-256 over TCP, trust on the private unix socket."""
        self.ensure_dirs()
        pwfile = self.root / "superuser-password"
        if not pwfile.exists():
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(secrets.token_urlsafe(24) + "\n")
        argv: list[str | os.PathLike[str]] = [
            *user_namespace_prefix(),
            self.bins.program("initdb"),
            "-D", self.data_dir,
            "-U", SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "--encoding=UTF8",
            "--locale=C",
            # An empty cluster is cheap to recreate; skipping fsync halves the cold start.
            "--no-sync",
        ]  # fmt: skip
        try:
            result = proc.run(argv, timeout=timeout)
        except CommandFailed as exc:
            if os.geteuid() == 0 and "unshare" in (exc.detail or ""):
                exc.hint = (
                    "PostgreSQL runs in a user namespace when taskscale runs as root, and this "
                    "system does not allow one: run taskscale as an ordinary user"
                )
            raise
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(result.stdout)
            log.write(result.stderr)
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(f"\ninclude_if_exists = '{SETTINGS_FILE}'\n")

    def write_settings(self) -> None:
        self.ensure_dirs()
        path = self.data_dir / SETTINGS_FILE
        tmp = path.with_name(f".{SETTINGS_FILE}.tmp")
        tmp.write_text(render_settings(self.settings), encoding="utf-8")
        os.replace(tmp, path)

    def argv(self) -> list[str]:
        postgres = os.fspath(self.bins.program("postgres"))
        return [*user_namespace_prefix(), postgres, "-D", os.fspath(self.data_dir)]

    def connect(
        self, dbname: str = "postgres", timeout: float = 2.0
    ) -> psycopg.Connection[TupleRow]:
        """A superuser connection over the unix socket (trust; the socket dir is 0700)."""
        import psycopg

        conn: psycopg.Connection[TupleRow] = psycopg.connect(
            host=os.fspath(self.settings.socket_dir),
            port=self.settings.port,
            user=SUPERUSER,
            dbname=dbname,
            connect_timeout=max(1, int(timeout)),
            autocommit=True,
        )
        return conn

    def _postmaster_ready(self) -> bool:
        """Line 8 of postmaster.pid is the postmaster's status; "ready" once it accepts
        connections (what pg_ctl -w waits for). Checking it first keeps "the database system is
        starting up" errors out of the log."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text(errors="replace").splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready"

    def ready(self) -> bool:
        if not self._postmaster_ready():
            return False
        import psycopg

        try:
            with self.connect(timeout=1):
                return True
        except psycopg.Error:
            return False

    def ensure_roles(
        self,
        *,
        user: str,
        password: str,
        database: str,
        replication_user: str | None,
        replication_password: str | None,
    ) -> None:
        """Create (or update the password of) the app role and database, and the replication role.

        Idempotent and cheap, so every ``up`` runs it: a regenerated ``.env`` takes effect.
        """
        from psycopg import sql

        with self.connect() as conn:
            roles = [(user, password, False)]
            if replication_user and replication_password:
                roles.append((replication_user, replication_password, True))
            for name, secret, replication in roles:
                exists = conn.execute(
                    "SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)
                ).fetchone()
                verb = sql.SQL("ALTER") if exists else sql.SQL("CREATE")
                attrs = sql.SQL("LOGIN REPLICATION") if replication else sql.SQL("LOGIN")
                conn.execute(
                    sql.SQL("{} ROLE {} WITH {} PASSWORD {}").format(
                        verb, sql.Identifier(name), attrs, sql.Literal(secret)
                    )
                )
            has_db = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            if not has_db:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(database), sql.Identifier(user)
                    )
                )

    def alembic_versions(self, database: str) -> set[str] | None:
        """Revisions recorded in ``alembic_version``; None when the table does not exist."""
        import psycopg

        try:
            with self.connect(dbname=database) as conn:
                rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        except psycopg.errors.UndefinedTable:
            return None
        return {str(row[0]) for row in rows}
