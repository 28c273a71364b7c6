"""Streaming replication for the local target: standbys as extra PostgreSQL services.

Node names are service names: the first primary is ``postgres`` and standbys are
``postgres-2``, ``postgres-3``, ... Roles change (switchover, failover) but names and ports
never do, so logs, status and the state file stay readable. The topology (which node is the
primary, which follow it, which need a rejoin, synchronous or not) is kept in
``.taskscale/replication.json``; ``up`` reads it to start the right nodes and to give the app
``DATABASE_URL`` (the primary) and ``DATABASE_REPLICA_URLS`` (the streaming standbys).

Every standby has its own physical replication slot on the primary (so the primary keeps the
WAL it still needs) and connects as the dedicated REPLICATION role with scram-sha-256 over
loopback; pg_hba allows replication to that role only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from taskscale import proc
from taskscale.errors import TargetError, TaskscaleError, UsageError
from taskscale.replication import plan, sql
from taskscale.replication.model import ClusterStatus, NodeStatus
from taskscale.targets.base import StepCallback
from taskscale.targets.local import ports
from taskscale.targets.local.postgres import (
    SETTINGS_FILE,
    LocalPostgres,
    PostgresSettings,
    render_settings,
    socket_dir_for,
    user_namespace_prefix,
)
from taskscale.targets.local.state import TOPOLOGY_FILE, StackState

if TYPE_CHECKING:
    from taskscale.targets.local.target import LocalTarget, _Run

PRIMARY = "postgres"
STREAMING_TIMEOUT = 30.0


@dataclass
class Topology:
    primary: str = PRIMARY
    standbys: list[str] = field(default_factory=list)
    sync: bool = False
    # Former primaries after a failover: stopped, waiting for `replicate rejoin`.
    detached: list[str] = field(default_factory=list)

    @property
    def nodes(self) -> list[str]:
        return [self.primary, *self.standbys, *self.detached]

    @classmethod
    def load(cls, state_dir: Path) -> Topology:
        path = state_dir / TOPOLOGY_FILE
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except ValueError as exc:
            raise TaskscaleError(f"{path} is corrupt: {exc}") from exc
        return cls(
            primary=str(data.get("primary", PRIMARY)),
            standbys=[str(s) for s in data.get("standbys", [])],
            sync=bool(data.get("sync", False)),
            detached=[str(s) for s in data.get("detached", [])],
        )

    def save(self, state_dir: Path) -> None:
        path = state_dir / TOPOLOGY_FILE
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{TOPOLOGY_FILE}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)


class LocalCluster:
    """The PostgreSQL nodes of one local stack and the operations on them."""

    def __init__(self, target: LocalTarget) -> None:
        self.target = target
        self.project = target.project
        self.config = target.config
        self.state_dir = target.state_dir
        secrets = self.project.secrets()
        self.repl_user = secrets.get("REPLICATION_USER", "replicator")
        self.repl_password = secrets.get("REPLICATION_PASSWORD", "")
        self.app_user = secrets.get("POSTGRES_USER", self.config.postgres.user)
        self.app_password = secrets.get("POSTGRES_PASSWORD", "")
        self.database = secrets.get("POSTGRES_DB", self.config.postgres.database)

    # ------------------------------------------------------------------ layout

    def topology(self) -> Topology:
        return Topology.load(self.state_dir)

    def port(self, node: str) -> int:
        if node == PRIMARY:
            return self.config.ports.postgres
        try:
            number = int(node.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            raise UsageError(f"not a PostgreSQL node name: {node!r}") from None
        return self.config.ports.postgres_standby_base + number - 2

    def node(self, name: str) -> LocalPostgres:
        settings = PostgresSettings(
            port=self.port(name),
            max_connections=self.config.postgres.max_connections,
            socket_dir=socket_dir_for(self.state_dir),
        )
        # Each node's directory stands on its own (never nested in another node's), so removing
        # a node can never touch another's data.
        root = None if name == PRIMARY else self.state_dir / name
        return LocalPostgres(self.target.pg_bins(), self.state_dir, settings, root=root)

    def database_urls(self, topology: Topology | None = None) -> tuple[str, list[str]]:
        """(DATABASE_URL of the primary, DATABASE_REPLICA_URLS of the standbys) for the app."""
        topology = topology or self.topology()

        def url(node: str) -> str:
            return (
                f"postgresql+psycopg://{self.app_user}:{self.app_password}"
                f"@127.0.0.1:{self.port(node)}/{self.database}"
            )

        return url(topology.primary), [url(s) for s in topology.standbys]

    # ------------------------------------------------------------------ status

    def status(self) -> ClusterStatus:
        topology = self.topology()
        nodes: list[NodeStatus] = []
        notes: list[str] = []
        senders: dict[str, sql.WalSender] = {}
        primary_info: sql.NodeInfo | None = None
        try:
            with self.node(topology.primary).connect(timeout=2) as conn:
                primary_info = sql.node_info(conn)
                senders = {s.application_name: s for s in sql.wal_senders(conn)}
        except psycopg.Error:
            notes.append(
                f"primary {topology.primary} does not answer: "
                "`taskscale replicate failover` promotes a standby"
            )
        nodes.append(
            plan.primary_status(topology.primary, primary_info, port=self.port(topology.primary))
        )
        for name in topology.standbys:
            nodes.append(self._standby_status(name, senders.get(name), primary_info))
        for name in topology.detached:
            nodes.append(
                NodeStatus(name=name, role="standby", state="detached", port=self.port(name))
            )
            notes.append(f"{name} is a former primary: `taskscale replicate rejoin {name}`")
        return ClusterStatus(
            target=self.target.name,
            primary=topology.primary,
            sync=topology.sync,
            nodes=nodes,
            notes=notes,
        )

    def _standby_status(
        self, name: str, sender: sql.WalSender | None, primary: sql.NodeInfo | None
    ) -> NodeStatus:
        info: sql.NodeInfo | None = None
        with contextlib.suppress(psycopg.Error), self.node(name).connect(timeout=2) as conn:
            info = sql.node_info(conn)
        return plan.standby_status(
            name, info, sender, primary, port=self.port(name), slot=plan.slot_name(name)
        )

    # ------------------------------------------------------------------ replicate

    def ensure(self, run: _Run, count: int, sync: bool | None, on_step: StepCallback) -> list[str]:
        """Converge to ``count`` streaming standbys (sync or async); names of changed nodes."""
        plan.check_standby_count(count)
        topology = self.topology()
        self._require_running(run.state, topology.primary)
        changed: list[str] = []
        primary = self.node(topology.primary)
        self._configure_primary_access(primary)
        if sync is not None and sync != topology.sync:
            topology.sync = sync
            changed.append(f"sync={'on' if sync else 'off'}")

        removed = topology.standbys[count:]
        if removed:
            topology.standbys = topology.standbys[:count]
            on_step(f"removing standby {', '.join(removed)}")
            # Out of synchronous_standby_names and out of the app's read pool first (one
            # rollout for all of them), then stopped.
            self._apply_sync(topology)
            topology.save(self.state_dir)
            self.target.rollout_apps(run, on_step)
            for name in removed:
                self._remove_node(run, name, topology.primary)
            changed += removed

        # Standbys that should run but do not (stopped by `down`, crashed): start them again.
        changed += self.start_nodes(run, on_step, topology)

        added = False
        while len(topology.standbys) < count:
            name = self._next_name(topology)
            on_step(f"cloning standby {name} (pg_basebackup)")
            self._start_standby(run, name, topology.primary, fresh=True)
            topology.standbys.append(name)
            topology.save(self.state_dir)
            changed.append(name)
            added = True

        if topology.standbys:
            on_step("waiting for every standby to stream")
            for name in topology.standbys:
                self._wait_streaming(run, topology.primary, name)
        self._apply_sync(topology)
        topology.save(self.state_dir)
        if added or (changed and not removed):
            self.target.rollout_apps(run, on_step)
        return changed

    def start_nodes(
        self, run: _Run, on_step: StepCallback, topology: Topology | None = None
    ) -> list[str]:
        """Start the topology's standbys that do not run (``up`` calls it once the primary
        runs); names of those started."""
        topology = topology or self.topology()
        started: list[str] = []
        for name in topology.standbys:
            if _alive(run.state, name):
                continue
            run.state.services.pop(name, None)
            on_step(f"starting standby {name}")
            self._start_standby(run, name, topology.primary, fresh=False)
            started.append(name)
        return started

    # ------------------------------------------------------------------ switchover / failover

    def switchover(
        self, run: _Run, to: str, max_lag_bytes: int, on_step: StepCallback
    ) -> list[str]:
        topology = self.topology()
        self._check_node(topology, to)
        if to == topology.primary:
            raise UsageError(f"{to} is already the primary")
        if to not in topology.standbys:
            raise UsageError(f"{to} is not a streaming standby (rejoin it first)")
        self._require_running(run.state, topology.primary)
        current = self.status()
        target_status = current.node(to)
        if target_status is None or target_status.state != "streaming":
            state = target_status.state if target_status else "unknown"
            raise TargetError(f"refusing switchover: {to} is not streaming (state: {state})")
        lag = target_status.lag_bytes or 0
        if lag > max_lag_bytes:
            raise TargetError(
                f"refusing switchover: {to} is {lag} bytes behind (limit {max_lag_bytes})",
                hint="wait for it to catch up or raise --max-lag",
            )
        old = topology.primary
        old_node = self.node(old)
        on_step(f"stopping primary {old} (clean shutdown sends all WAL to standbys)")
        self._stop(run, old)
        final_lsn = self._checkpoint_lsn(old_node)
        on_step(f"waiting for {to} to replay up to {final_lsn}")
        new_node = self.node(to)
        if not proc.poll_until(lambda: self._replayed(new_node, final_lsn), STREAMING_TIMEOUT):
            raise TargetError(
                f"{to} did not replay the old primary's last WAL ({final_lsn}) in time; "
                f"{old} is stopped: run `taskscale replicate failover --to {to}`"
            )
        on_step(f"promoting {to}")
        self._promote(new_node)
        topology.primary = to
        topology.standbys = [old, *[s for s in topology.standbys if s != to]]
        topology.save(self.state_dir)
        self._follow_new_primary(run, topology, on_step, rewind=[old])
        return [old, to]

    def failover(self, run: _Run, to: str | None, force: bool, on_step: StepCallback) -> list[str]:
        topology = self.topology()
        if to is not None:
            self._check_node(topology, to)
            if to not in topology.standbys:
                raise UsageError(f"{to} is not a standby of this cluster")
        if not topology.standbys:
            raise UsageError("there is no standby to fail over to (taskscale replicate first)")
        old = topology.primary
        primary_alive = self.node(old).ready()
        if primary_alive and not force:
            raise TargetError(
                f"the primary {old} is healthy: refusing to fail over",
                hint="use `taskscale replicate switchover --to NODE`, or --force to fence it",
            )
        if primary_alive or old in run.state.services:
            on_step(f"fencing the old primary {old}")
            self._stop(run, old)
        status = self.status()
        candidates = [n for n in status.standbys if n.name in topology.standbys]
        if to is None:
            best = plan.most_advanced(candidates)
            if best is None:
                raise TargetError("no standby answers: nothing can be promoted")
            to = best.name
        elif (chosen := status.node(to)) is None or chosen.state == "down":
            raise TargetError(f"{to} does not answer: choose another standby")
        on_step(f"promoting {to}")
        self._promote(self.node(to))
        topology.primary = to
        topology.standbys = [s for s in topology.standbys if s != to]
        topology.detached = [*topology.detached, old]
        topology.save(self.state_dir)
        self._follow_new_primary(run, topology, on_step, rewind=[])
        return [old, to]

    def rejoin(self, run: _Run, name: str, on_step: StepCallback) -> list[str]:
        topology = self.topology()
        self._check_node(topology, name)
        if name == topology.primary:
            raise UsageError(f"{name} is the primary; only a standby or former primary rejoins")
        self._require_running(run.state, topology.primary)
        on_step(f"stopping {name}")
        self._stop(run, name)
        on_step(f"rewinding {name} onto {topology.primary}'s timeline (pg_rewind)")
        self._rewind(name, topology.primary)
        self._make_standby(run, name, topology.primary)
        # The slot first: the node streams through it, and a hot standby accepts connections
        # (our readiness check) only once it has received enough WAL to be consistent.
        with self.node(topology.primary).connect() as conn:
            sql.ensure_slot(conn, plan.slot_name(name))
        on_step(f"starting {name} as a standby")
        self._spawn_node(run, name)
        if name not in topology.standbys:
            topology.standbys.append(name)
        topology.detached = [d for d in topology.detached if d != name]
        topology.save(self.state_dir)
        self._wait_streaming(run, topology.primary, name)
        self._apply_sync(topology)
        self.target.rollout_apps(run, on_step)
        return [name]

    # ------------------------------------------------------------------ building blocks

    def _follow_new_primary(
        self, run: _Run, topology: Topology, on_step: StepCallback, rewind: list[str]
    ) -> None:
        """After a promotion: slots on the new primary, standbys re-pointed, app re-pointed."""
        primary = self.node(topology.primary)
        self._configure_primary_access(primary)
        with primary.connect() as conn:
            # Slots copied from the old primary by pg_basebackup are stale here.
            for slot in sql.slots(conn):
                sql.drop_slot(conn, slot)
            for name in topology.standbys:
                sql.ensure_slot(conn, plan.slot_name(name))
        # The standbys that still run follow the new primary at once (a reload): with --sync,
        # commits on the new primary wait for one of them, so this comes before the app moves.
        stopped: list[str] = []
        for name in topology.standbys:
            record = run.state.services.get(name)
            if record is not None and record.alive() and name not in rewind:
                on_step(f"re-pointing {name} at {topology.primary}")
                self._make_standby(run, name, topology.primary)
                with self.node(name).connect() as conn:
                    conn.execute("SELECT pg_reload_conf()")
            else:
                stopped.append(name)
        self._apply_sync(topology)
        # Then the app: writes go to the new primary as soon as its replicas are ready.
        self.target.rollout_apps(run, on_step)
        # Last, nodes that must be rewound or restarted (the old primary after a switchover).
        for name in stopped:
            on_step(f"starting {name} as a standby of {topology.primary}")
            if name in rewind:
                self._rewind(name, topology.primary)
            self._make_standby(run, name, topology.primary)
            run.state.services.pop(name, None)
            self._spawn_node(run, name)
        for name in topology.standbys:
            self._wait_streaming(run, topology.primary, name)

    def _next_name(self, topology: Topology) -> str:
        used = set(topology.nodes)
        index = 1
        while plan.standby_name(index) in used:
            index += 1
        return plan.standby_name(index)

    def _check_node(self, topology: Topology, name: str) -> None:
        if name not in topology.nodes:
            known = ", ".join(topology.nodes)
            raise UsageError(f"unknown node {name!r}: this cluster has {known}")

    def _require_running(self, state: StackState, primary: str) -> None:
        if not _alive(state, primary):
            raise TargetError(
                f"the primary ({primary}) is not running",
                hint="start the stack with `taskscale up` (or fail over if it died)",
            )

    def _configure_primary_access(self, primary: LocalPostgres) -> None:
        """pg_hba: replication for the replication role only, from loopback, scram."""
        hba = primary.data_dir / "pg_hba.conf"
        text = hba.read_text(encoding="utf-8")
        new = plan.rewrite_hba(text, self.repl_user)
        if new != text:
            hba.write_text(new, encoding="utf-8")
            with primary.connect() as conn:
                conn.execute("SELECT pg_reload_conf()")

    def _apply_sync(self, topology: Topology) -> None:
        """synchronous_standby_names on the primary: ANY 1 of the standbys, or none."""
        standbys = topology.standbys if topology.sync else []
        value = plan.synchronous_standby_names(standbys, bool(standbys))
        with self.node(topology.primary).connect() as conn:
            if value:
                sql.set_system(conn, "synchronous_standby_names", value)
            else:
                sql.reset_system(conn, "synchronous_standby_names")

    def _start_standby(self, run: _Run, name: str, primary: str, *, fresh: bool) -> None:
        node = self.node(name)
        port = self.port(name)
        ports.check_ports_free({port: name})
        if fresh or not node.initialized:
            self._clone(name, primary)
        self._make_standby(run, name, primary)
        self._spawn_node(run, name)

    def _clone(self, name: str, primary: str) -> None:
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
                self.target.pg_bins().program("pg_basebackup"),
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

    def _make_standby(self, run: _Run, name: str, primary: str) -> None:
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
        if replslot.is_dir() and not _alive(run.state, name):
            for child in replslot.iterdir():
                shutil.rmtree(child, ignore_errors=True)

    def _spawn_node(self, run: _Run, name: str) -> None:
        node = self.node(name)
        record = self.target.spawn(run, name, "postgres", node.argv(), self.port(name))
        self.target.wait_ready(record, node.ready)

    def _stop(self, run: _Run, name: str) -> None:
        record = run.state.services.get(name)
        if record is not None:
            self.target.stop_many([record])
            run.state.services.pop(name, None)
            run.state_file.save(run.state)
        node = self.node(name)
        pidfile = node.data_dir / "postmaster.pid"
        if pidfile.exists():
            # Not ours in the state file but running (a crash of taskscale): stop it by pid.
            with contextlib.suppress(ValueError, OSError):
                pid = int(pidfile.read_text().splitlines()[0])
                proc.terminate(pid, timeout=30)

    def _remove_node(self, run: _Run, name: str, primary: str) -> None:
        self._stop(run, name)
        with self.node(primary).connect() as conn:
            sql.drop_slot(conn, plan.slot_name(name))
        # Only the data directory: the first node's root also holds the superuser password.
        shutil.rmtree(self.node(name).data_dir, ignore_errors=True)

    def _checkpoint_lsn(self, node: LocalPostgres) -> str:
        result = proc.run(
            [*user_namespace_prefix(), self.target.pg_bins().program("pg_controldata"),
             "-D", node.data_dir],
            timeout=30,
            env={**os.environ, "LC_ALL": "C"},
        )  # fmt: skip
        for line in result.stdout.splitlines():
            if line.startswith("Latest checkpoint location:"):
                return line.split(":", 1)[1].strip()
        raise TargetError(f"pg_controldata did not report a checkpoint for {node.data_dir}")

    def _replayed(self, node: LocalPostgres, lsn: str) -> bool:
        try:
            with node.connect(timeout=1) as conn:
                return sql.replayed_at_least(conn, lsn)
        except psycopg.Error:
            return False

    def _promote(self, node: LocalPostgres) -> None:
        with node.connect() as conn:
            if not sql.promote(conn, wait_seconds=30):
                raise TargetError(f"{node.data_dir} did not finish promotion in 30 s")
        (node.data_dir / "standby.signal").unlink(missing_ok=True)
        # The promoted node keeps its settings file; drop the standby-only lines.
        path = node.data_dir / SETTINGS_FILE
        path.write_text(render_settings(node.settings), encoding="utf-8")

    def _rewind(self, name: str, primary: str) -> None:
        node = self.node(name)
        source = self.node(primary)
        proc.run(
            [
                *user_namespace_prefix(),
                self.target.pg_bins().program("pg_rewind"),
                f"--target-pgdata={node.data_dir}",
                f"--source-server=host={source.settings.socket_dir} "
                f"port={source.settings.port} user=postgres dbname=postgres",
            ],
            timeout=300,
        )

    def _wait_streaming(self, run: _Run, primary: str, name: str) -> None:
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

        record = run.state.services.get(name)
        proc.wait_until(
            streaming,
            timeout=STREAMING_TIMEOUT,
            what=f"standby {name} (streaming from {primary})",
            log_path=record.log_path if record else None,
        )


def _alive(state: StackState, name: str) -> bool:
    record = state.services.get(name)
    return record is not None and record.alive()


__all__ = ["LocalCluster", "Topology"]
