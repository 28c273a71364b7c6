"""Streaming replication for the local target: standbys as extra PostgreSQL services.

Nodes, their names, ports and the topology file are ``topology``; this module changes them.
Every standby has its own physical replication slot on the primary (so the primary keeps the
WAL it still needs) and connects as the dedicated REPLICATION role with scram-sha-256 over
loopback; pg_hba allows replication to that role only. Whenever the app must see a new primary
or new standbys, the fleet rolls out (blue/green) through the ``rollout`` callback the target
passes in.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import psycopg

from taskscale import proc
from taskscale.errors import TargetError, UsageError
from taskscale.replication import plan, sql
from taskscale.replication.model import ClusterStatus, NodeStatus, ReplicationChange
from taskscale.targets.capabilities import Promotion, Replication, Standbys
from taskscale.targets.local.postgres import (
    LocalPostgres,
)
from taskscale.targets.local.standby import STREAMING_TIMEOUT, NodeOperations
from taskscale.targets.local.state import StackState
from taskscale.targets.local.supervisor import Run, Supervisor
from taskscale.targets.local.topology import Nodes, Topology
from taskscale.targets.model import StepCallback, no_steps

# Re-points the app at the current topology (a blue/green rollout of the replicas).
Rollout = Callable[[Run, StepCallback], None]


class LocalReplication(Replication, Standbys, Promotion):
    """The PostgreSQL nodes of one local stack and every replication operation on them."""

    def __init__(self, supervisor: Supervisor, nodes: Nodes, rollout: Rollout) -> None:
        self.supervisor = supervisor
        self.nodes = nodes
        self.rollout = rollout
        self.state_dir = nodes.state_dir
        self.ops = NodeOperations(supervisor, nodes)

    def standbys(self) -> Standbys:
        return self

    def promotion(self) -> Promotion:
        return self

    # ------------------------------------------------------------------ layout

    def topology(self) -> Topology:
        return self.nodes.topology()

    def port(self, node: str) -> int:
        return self.nodes.port(node)

    def node(self, name: str) -> LocalPostgres:
        return self.nodes.node(name)

    # ------------------------------------------------------------------ the capability

    def status(self) -> ClusterStatus:
        if not self.supervisor.load().services:
            raise _not_running()
        try:
            return self.cluster_status()
        except psycopg.Error as exc:
            raise TargetError(f"replication status failed: {_first_line(exc)}") from exc

    def replicate(
        self, standbys: int | None, sync: bool | None, on_step: StepCallback = no_steps
    ) -> ReplicationChange:
        def action(run: Run) -> list[str]:
            count = standbys if standbys is not None else max(1, len(self.topology().standbys))
            return self.ensure(run, count, sync, on_step)

        return self._change("replicate", action)

    def switchover(
        self, to: str, max_lag_bytes: int, on_step: StepCallback = no_steps
    ) -> ReplicationChange:
        return self._change(
            "switchover", lambda run: self._switchover(run, to, max_lag_bytes, on_step)
        )

    def failover(
        self, to: str | None, force: bool, on_step: StepCallback = no_steps
    ) -> ReplicationChange:
        return self._change("failover", lambda run: self._failover(run, to, force, on_step))

    def rejoin(self, node: str, on_step: StepCallback = no_steps) -> ReplicationChange:
        return self._change("rejoin", lambda run: self._rejoin(run, node, on_step))

    def _change(self, action: str, body: Callable[[Run], list[str]]) -> ReplicationChange:
        """Run a replication action under the stack lock; on failure, stop the nodes it
        started that the saved topology does not name (a half-built standby)."""
        start = time.monotonic()
        with self.supervisor.state_file.locked():
            run = Run(self.supervisor.load(), self.supervisor.state_file)
            if not run.state.services:
                raise _not_running()
            try:
                changed = body(run)
            except psycopg.Error as exc:
                self._stop_strays(run)
                raise TargetError(f"{action} failed: {_first_line(exc)}") from exc
            except BaseException:
                self._stop_strays(run)
                raise
        seconds = time.monotonic() - start
        return ReplicationChange(
            action=action, changed=changed, status=self.cluster_status(), seconds=seconds
        )

    def _stop_strays(self, run: Run) -> None:
        known = set(self.topology().nodes)
        strays = [
            run.state.services[key]
            for key in run.started
            if key in run.state.services
            and run.state.services[key].kind == "postgres"
            and key not in known
        ]
        if strays:
            self.supervisor.stop(strays)
            with contextlib.suppress(OSError):
                run.forget(strays)

    # ------------------------------------------------------------------ status

    def cluster_status(self) -> ClusterStatus:
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
            target="local",
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

    def ensure(self, run: Run, count: int, sync: bool | None, on_step: StepCallback) -> list[str]:
        """Converge to ``count`` streaming standbys (sync or async); names of changed nodes."""
        plan.check_standby_count(count)
        topology = self.topology()
        self._require_running(run.state, topology.primary)
        changed: list[str] = []
        primary = self.node(topology.primary)
        self.ops.configure_primary_access(primary)
        if sync is not None and sync != topology.sync:
            topology.sync = sync
            changed.append(f"sync={'on' if sync else 'off'}")

        removed = topology.standbys[count:]
        if removed:
            topology.standbys = topology.standbys[:count]
            on_step(f"removing standby {', '.join(removed)}")
            # Out of synchronous_standby_names and out of the app's read pool first (one
            # rollout for all of them), then stopped.
            self.ops.apply_sync(topology)
            topology.save(self.state_dir)
            self.rollout(run, on_step)
            for name in removed:
                self.ops.remove_node(run, name, topology.primary)
            changed += removed

        # Standbys that should run but do not (stopped by `down`, crashed): start them again.
        changed += self.start_nodes(run, on_step, topology)

        added = False
        while len(topology.standbys) < count:
            name = self._next_name(topology)
            on_step(f"cloning standby {name} (pg_basebackup)")
            self.ops.start_standby(run, name, topology.primary, fresh=True)
            topology.standbys.append(name)
            topology.save(self.state_dir)
            changed.append(name)
            added = True

        if topology.standbys:
            on_step("waiting for every standby to stream")
            for name in topology.standbys:
                self.ops.wait_streaming(run, topology.primary, name)
        self.ops.apply_sync(topology)
        topology.save(self.state_dir)
        if added or (changed and not removed):
            self.rollout(run, on_step)
        return changed

    def start_nodes(
        self, run: Run, on_step: StepCallback, topology: Topology | None = None
    ) -> list[str]:
        """Start the topology's standbys that do not run (``up`` calls it once the primary
        runs); names of those started."""
        topology = topology or self.topology()
        started: list[str] = []
        for name in topology.standbys:
            if self.ops.alive(run.state, name):
                continue
            run.state.services.pop(name, None)
            on_step(f"starting standby {name}")
            self.ops.start_standby(run, name, topology.primary, fresh=False)
            started.append(name)
        return started

    # ------------------------------------------------------------------ switchover / failover

    def _switchover(
        self, run: Run, to: str, max_lag_bytes: int, on_step: StepCallback
    ) -> list[str]:
        topology = self.topology()
        self._check_node(topology, to)
        if to == topology.primary:
            raise UsageError(f"{to} is already the primary")
        if to not in topology.standbys:
            raise UsageError(f"{to} is not a streaming standby (rejoin it first)")
        self._require_running(run.state, topology.primary)
        current = self.cluster_status()
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
        self.ops.stop(run, old)
        final_lsn = self.ops.checkpoint_lsn(old_node)
        on_step(f"waiting for {to} to replay up to {final_lsn}")
        new_node = self.node(to)
        if not proc.poll_until(lambda: self.ops.replayed(new_node, final_lsn), STREAMING_TIMEOUT):
            raise TargetError(
                f"{to} did not replay the old primary's last WAL ({final_lsn}) in time; "
                f"{old} is stopped: run `taskscale replicate failover --to {to}`"
            )
        on_step(f"promoting {to}")
        self.ops.promote(new_node)
        topology.primary = to
        topology.standbys = [old, *[s for s in topology.standbys if s != to]]
        topology.save(self.state_dir)
        self._follow_new_primary(run, topology, on_step, rewind=[old])
        return [old, to]

    def _failover(self, run: Run, to: str | None, force: bool, on_step: StepCallback) -> list[str]:
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
            self.ops.stop(run, old, fence=True)
        status = self.cluster_status()
        candidates = [n for n in status.standbys if n.name in topology.standbys]
        if to is None:
            best = plan.most_advanced(candidates)
            if best is None:
                raise TargetError("no standby answers: nothing can be promoted")
            to = best.name
        elif (chosen := status.node(to)) is None or chosen.state == "down":
            raise TargetError(f"{to} does not answer: choose another standby")
        on_step(f"promoting {to}")
        self.ops.promote(self.node(to))
        topology.primary = to
        topology.standbys = [s for s in topology.standbys if s != to]
        topology.detached = [*topology.detached, old]
        topology.save(self.state_dir)
        self._follow_new_primary(run, topology, on_step, rewind=[])
        return [old, to]

    def _rejoin(self, run: Run, name: str, on_step: StepCallback) -> list[str]:
        topology = self.topology()
        self._check_node(topology, name)
        if name == topology.primary:
            raise UsageError(f"{name} is the primary; only a standby or former primary rejoins")
        self._require_running(run.state, topology.primary)
        on_step(f"stopping {name}")
        self.ops.stop(run, name)
        on_step(f"rewinding {name} onto {topology.primary}'s timeline (pg_rewind)")
        self.ops.rewind(name, topology.primary)
        self.ops.make_standby(run, name, topology.primary)
        # The slot first: the node streams through it, and a hot standby accepts connections
        # (our readiness check) only once it has received enough WAL to be consistent.
        with self.node(topology.primary).connect() as conn:
            sql.ensure_slot(conn, plan.slot_name(name))
        on_step(f"starting {name} as a standby")
        self.ops.spawn_node(run, name)
        if name not in topology.standbys:
            topology.standbys.append(name)
        topology.detached = [d for d in topology.detached if d != name]
        topology.save(self.state_dir)
        self.ops.wait_streaming(run, topology.primary, name)
        self.ops.apply_sync(topology)
        self.rollout(run, on_step)
        return [name]

    # ------------------------------------------------------------------ building blocks

    def _follow_new_primary(
        self, run: Run, topology: Topology, on_step: StepCallback, rewind: list[str]
    ) -> None:
        """After a promotion: slots on the new primary, standbys re-pointed, app re-pointed."""
        primary = self.node(topology.primary)
        self.ops.configure_primary_access(primary)
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
            record = run.state.named(name)
            if record is not None and self.supervisor.alive(record) and name not in rewind:
                on_step(f"re-pointing {name} at {topology.primary}")
                self.ops.make_standby(run, name, topology.primary)
                with self.node(name).connect() as conn:
                    conn.execute("SELECT pg_reload_conf()")
            else:
                stopped.append(name)
        self.ops.apply_sync(topology)
        # Then the app: writes go to the new primary as soon as its replicas are ready.
        self.rollout(run, on_step)
        # Last, nodes that must be rewound or restarted (the old primary after a switchover).
        for name in stopped:
            on_step(f"starting {name} as a standby of {topology.primary}")
            if name in rewind:
                self.ops.rewind(name, topology.primary)
            self.ops.make_standby(run, name, topology.primary)
            run.state.services.pop(name, None)
            self.ops.spawn_node(run, name)
        for name in topology.standbys:
            self.ops.wait_streaming(run, topology.primary, name)

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
        if not self.ops.alive(state, primary):
            raise TargetError(
                f"the primary ({primary}) is not running",
                hint="start the stack with `taskscale up` (or fail over if it died)",
            )


def _not_running() -> TargetError:
    return TargetError("the stack is not running", hint="start it with `taskscale up` first")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
