"""Building blocks on the PostgreSQL nodes of a local stack: clone, configure, start, stop,
promote and rewind one node, and wait until a standby streams. ``replication`` composes them
into replicate, switchover, failover and rejoin.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal

import psycopg

from taskscale import proc
from taskscale.errors import TargetError
from taskscale.replication import plan, sql
from taskscale.targets import ports
from taskscale.targets.local.postgres import (
    SETTINGS_FILE,
    LocalPostgres,
    render_settings,
    user_namespace_prefix,
)
from taskscale.targets.local.state import StackState
from taskscale.targets.local.supervisor import ProcessSpec, Run, Supervisor
from taskscale.targets.local.topology import Nodes, Topology

STREAMING_TIMEOUT = 30.0


class NodeOperations:
    """One node at a time, through the supervisor (processes) and PostgreSQL (SQL)."""

    def __init__(self, supervisor: Supervisor, nodes: Nodes) -> None:
        self.supervisor = supervisor
        self.nodes = nodes
        self.repl_user = nodes.credentials.replication_user
        self.repl_password = nodes.credentials.replication_password

    def port(self, node: str) -> int:
        return self.nodes.port(node)

    def node(self, name: str) -> LocalPostgres:
        return self.nodes.node(name)

    def configure_primary_access(self, primary: LocalPostgres) -> None:
        """pg_hba: replication for the replication role only, from loopback, scram."""
        hba = primary.data_dir / "pg_hba.conf"
        text = hba.read_text(encoding="utf-8")
        new = plan.rewrite_hba(text, self.repl_user)
        if new != text:
            hba.write_text(new, encoding="utf-8")
            with primary.connect() as conn:
                conn.execute("SELECT pg_reload_conf()")

    def apply_sync(self, topology: Topology) -> None:
        """synchronous_standby_names on the primary: ANY 1 of the standbys, or none."""
        standbys = topology.standbys if topology.sync else []
        value = plan.synchronous_standby_names(standbys, bool(standbys))
        with self.node(topology.primary).connect() as conn:
            if value:
                sql.set_system(conn, "synchronous_standby_names", value)
            else:
                sql.reset_system(conn, "synchronous_standby_names")

    def start_standby(self, run: Run, name: str, primary: str, *, fresh: bool) -> None:
        node = self.node(name)
        port = self.port(name)
        ports.check_ports_free({port: name})
        if fresh or not node.initialized:
            self.clone(name, primary)
        self.make_standby(run, name, primary)
        self.spawn_node(run, name)

    def clone(self, name: str, primary: str) -> None:
        node = self.node(name)
        if node.data_dir.exists():
            shutil.rmtree(node.data_dir)
        node.ensure_dirs()
        slot = plan.slot_name(name)
        with self.node(primary).connect() as conn:
            sql.ensure_slot(conn, slot)
        env = dict(os.environ)
        env["PGPASSWORD"] = self.repl_password
        env.pop("PGSERVICEFILE", None)
        proc.run(
            [
                *user_namespace_prefix(),
                self.nodes.bins().program("pg_basebackup"),
                "-D",
                node.data_dir,
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port(primary)),
                "-U",
                self.repl_user,
                "-X",
                "stream",
                "-S",
                slot,
                "-c",
                "fast",
                "--no-sync",
                "-w",
            ],
            timeout=120,
            env=env,
        )
        # The primary's pg_replslot entries (other standbys' slots) are not copied, but its
        # auto.conf (synchronous_standby_names) is: the standby ignores it until promoted.

    def make_standby(self, run: Run, name: str, primary: str) -> None:
        """standby.signal + settings: this node's port, following ``primary`` through its slot."""
        node = self.node(name)
        (node.data_dir / "standby.signal").touch()
        conninfo = plan.primary_conninfo(
            port=self.port(primary),
            user=self.repl_user,
            password=self.repl_password,
            application_name=name,
        )
        extra = (
            "# Standby of the current primary (rewritten by taskscale replicate).\n"
            f"primary_conninfo = '{conninfo.replace(chr(39), chr(39) * 2)}'\n"
            f"primary_slot_name = '{plan.slot_name(name)}'\n"
            "recovery_target_timeline = 'latest'\n"
            "hot_standby_feedback = on\n"
        )
        path = node.data_dir / SETTINGS_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(render_settings(node.settings) + extra)
        # Slots inherited from a former life as primary would pin WAL here forever.
        replslot = node.data_dir / "pg_replslot"
        if replslot.is_dir() and not self.alive(run.state, name):
            for child in replslot.iterdir():
                shutil.rmtree(child, ignore_errors=True)

    def spawn_node(self, run: Run, name: str) -> None:
        node = self.node(name)
        spec = ProcessSpec(name, "postgres", node.argv(), self.port(name))
        record = self.supervisor.spawn(run, spec)
        self.supervisor.wait_ready(record, node.ready)

    def stop(self, run: Run, name: str, *, fence: bool = False) -> None:
        """Stop node ``name``. ``fence``: a primary being replaced by a failover is stopped
        immediately (SIGQUIT, no shutdown checkpoint: it may be in crash recovery after a
        restart, and a fast shutdown then takes seconds of the failover's RTO); what it wrote
        since is rewound away when it rejoins (pg_rewind finishes its crash recovery first)."""
        record = run.state.named(name)
        if record is not None:
            self.supervisor.stop([record], sig=signal.SIGQUIT if fence else None)
            run.forget([record])
        node = self.node(name)
        pidfile = node.data_dir / "postmaster.pid"
        if pidfile.exists():
            # Not ours in the state file but running (a crash of taskscale): stop it by pid.
            with contextlib.suppress(ValueError, OSError):
                pid = int(pidfile.read_text().splitlines()[0])
                proc.terminate(pid, timeout=30)

    def remove_node(self, run: Run, name: str, primary: str) -> None:
        self.stop(run, name)
        with self.node(primary).connect() as conn:
            sql.drop_slot(conn, plan.slot_name(name))
        # Only the data directory: the first node's root also holds the superuser password.
        shutil.rmtree(self.node(name).data_dir, ignore_errors=True)

    def _controldata(self, node: LocalPostgres) -> dict[str, str]:
        result = proc.run(
            [*user_namespace_prefix(), self.nodes.bins().program("pg_controldata"),
             "-D", node.data_dir],
            timeout=30,
            env={**os.environ, "LC_ALL": "C"},
        )  # fmt: skip
        fields = (line.partition(":") for line in result.stdout.splitlines())
        return {key.strip(): value.strip() for key, _, value in fields}

    def checkpoint_lsn(self, node: LocalPostgres) -> str:
        lsn = self._controldata(node).get("Latest checkpoint location")
        if not lsn:
            raise TargetError(f"pg_controldata did not report a checkpoint for {node.data_dir}")
        return lsn

    def finish_crash_recovery(self, node: LocalPostgres) -> bool:
        """A former primary stopped while it was still replaying its own WAL after a crash (a
        restart policy brought it back, then a failover fenced it) is "shut down in recovery".
        pg_rewind trusts that state and takes the node's minimum recovery point as the end of
        its WAL, so the records the node wrote but never sent would stay, and it could never
        follow the new primary. Finishing the crash recovery in single-user mode (what
        pg_rewind itself does for a node that crashed) ends it with a clean shutdown
        checkpoint past every record. True when it had to."""
        if (node.data_dir / "standby.signal").exists():
            return False  # a standby shut down in recovery is consistent as it is
        if self._controldata(node).get("Database cluster state") != "shut down in recovery":
            return False
        proc.run(
            [*user_namespace_prefix(), self.nodes.bins().program("postgres"), "--single",
             "-F", "-c", "exit_on_error=false", "-D", node.data_dir, "template1"],
            timeout=300,
            input_text="",
        )  # fmt: skip
        return True

    def replayed(self, node: LocalPostgres, lsn: str) -> bool:
        try:
            with node.connect(timeout=1) as conn:
                return sql.replayed_at_least(conn, lsn)
        except psycopg.Error:
            return False

    def promote(self, node: LocalPostgres) -> None:
        with node.connect() as conn:
            if not sql.promote(conn, wait_seconds=30):
                raise TargetError(f"{node.data_dir} did not finish promotion in 30 s")
        (node.data_dir / "standby.signal").unlink(missing_ok=True)
        # The promoted node keeps its settings file; drop the standby-only lines.
        path = node.data_dir / SETTINGS_FILE
        path.write_text(render_settings(node.settings), encoding="utf-8")

    def rewind(self, name: str, primary: str) -> None:
        node = self.node(name)
        source = self.node(primary)
        self.finish_crash_recovery(node)
        proc.run(
            [
                *user_namespace_prefix(),
                self.nodes.bins().program("pg_rewind"),
                f"--target-pgdata={node.data_dir}",
                f"--source-server=host={source.settings.socket_dir} "
                f"port={source.settings.port} user=postgres dbname=postgres",
            ],
            timeout=300,
        )

    def wait_streaming(self, run: Run, primary: str, name: str) -> None:
        node = self.node(primary)

        def streaming() -> bool:
            try:
                with node.connect(timeout=1) as conn:
                    return any(
                        s.application_name == name and s.state == "streaming"
                        for s in sql.wal_senders(conn)
                    )
            except psycopg.Error:
                return False

        record = run.state.named(name)
        proc.wait_until(
            streaming,
            timeout=STREAMING_TIMEOUT,
            what=f"standby {name} (streaming from {primary})",
            log_path=record.log_path if record else None,
        )

    def alive(self, state: StackState, name: str) -> bool:
        record = state.named(name)
        return record is not None and self.supervisor.alive(record)
