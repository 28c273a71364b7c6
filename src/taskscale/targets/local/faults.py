"""Fault injection on the local target: signals to the supervised processes.

Every service is a process that leads its own process group (``proc.spawn`` starts a new
session; replicas forked from the launcher call ``setsid``), so a fault signals the group:
``kill`` is SIGKILL to the service and its children at once (PostgreSQL's backends, nginx's
workers: a crash of the whole service, with nothing left holding its port), ``stop`` is
SIGSTOP to all of them (a hang: connections are accepted by the kernel and never answered)
and ``resume`` SIGCONT. The record's start time is checked before every signal, so a pid the
system reused is never signalled.

What brings a killed service back is the stack's restart policy (the supervisor process),
not the drill; ``heal`` waits for it, and starts with ``taskscale up``'s convergence whatever
nothing restarted. A stopped process is alive: nothing restarts it, ``resume`` ends the hang.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from taskscale import proc
from taskscale.errors import TargetError
from taskscale.targets import ports
from taskscale.targets.capabilities import (
    FaultInjector,
    FaultTarget,
    Injected,
    Role,
    TaskRow,
)
from taskscale.targets.local.state import (
    START_TIME_TOLERANCE,
    ServiceRecord,
    StackState,
    process_start_time,
)
from taskscale.targets.local.supervisor import Supervisor
from taskscale.targets.local.topology import Nodes, Topology
from taskscale.targets.model import StepCallback, no_steps

if TYPE_CHECKING:
    from taskscale.config import Project

# Services taskscale runs for itself (the restart policy's process), not under test.
NOT_FAULTABLE = frozenset({"supervisor"})  # service kinds
HEAL_POLL = 0.1
READ_TIMEOUT_S = 10.0

TASKS_SQL = "SELECT id, title, description, status FROM tasks WHERE id = ANY(%s)"


class LocalFaults(FaultInjector):
    def __init__(
        self,
        project: Project,
        supervisor: Supervisor,
        nodes: Nodes,
        restart: Callable[[StepCallback], None],
    ) -> None:
        """``restart`` starts whatever is dead (``taskscale up`` at the current size)."""
        self.project = project
        self.supervisor = supervisor
        self.nodes = nodes
        self._restart = restart

    # ------------------------------------------------------------------ what runs

    def _newest(self, state: StackState) -> dict[str, ServiceRecord]:
        """One record per service name (during a rollout, the newest of app-N's two)."""
        names = {r.name for r in state.services.values() if r.kind not in NOT_FAULTABLE}
        found = {name: self.supervisor.record_of(name, state) for name in names}
        return {name: record for name, record in found.items() if record is not None}

    def _roles(self) -> dict[str, Role]:
        if not Topology.exists(self.project.state_dir):
            return {self.nodes.primary_name(): "primary"}
        topology = self.nodes.topology()
        roles: dict[str, Role] = {topology.primary: "primary"}
        roles.update({name: "standby" for name in topology.standbys})
        return roles

    def targets(self) -> list[FaultTarget]:
        records = self._newest(self.supervisor.load())
        if not records:
            raise TargetError("the stack is not running", hint="start it with `taskscale up`")
        roles = self._roles()
        return [
            FaultTarget(name, record.kind, roles.get(name) if record.kind == "postgres" else None)
            for name, record in sorted(records.items())
            if self.supervisor.alive(record)
        ]

    def restarts(self) -> dict[str, int]:
        """The supervisor's count per service (``status``'s restarts column)."""
        return {name: r.restarts for name, r in self._newest(self.supervisor.load()).items()}

    def _record(self, name: str) -> ServiceRecord:
        record = self._newest(self.supervisor.load()).get(name)
        if record is None or not self.supervisor.alive(record):
            raise TargetError(f"{name} is not running: no fault injected")
        return record

    # ------------------------------------------------------------------ faults

    def _signal(self, target: FaultTarget, sig: int) -> Injected:
        record = self._record(target.name)
        proc.signal_group(record.pid, sig)
        at = time.time()
        start = record.proc_start if record.proc_start is not None else 0.0
        return Injected(
            service=target.name,
            kind="kill" if sig == signal.SIGKILL else "stop",
            at=at,
            detail=f"{signal.Signals(sig).name} to pid {record.pid} and its process group",
            handle=f"{record.pid}:{start!r}",
        )

    def kill(self, target: FaultTarget) -> Injected:
        return self._signal(target, signal.SIGKILL)

    def stop(self, target: FaultTarget) -> Injected:
        return self._signal(target, signal.SIGSTOP)

    def resume(self, injected: Injected) -> None:
        pid_text, _, start_text = injected.handle.partition(":")
        pid, start = int(pid_text), float(start_text or 0.0)
        for record in self.supervisor.load().services.values():
            if record.pid == pid and (not start or record.proc_start == start):
                if record.alive():
                    proc.signal_group(pid, signal.SIGCONT)
                return
        # Forgotten by the state (a failover fenced it): still ours if the pid runs with the
        # start time we recorded.
        if proc.pid_alive(pid):
            now = process_start_time(pid)
            if not start or (now is not None and abs(now - start) < START_TIME_TOLERANCE):
                proc.signal_group(pid, signal.SIGCONT)

    def serving(self, name: str) -> bool:
        record = self._newest(self.supervisor.load()).get(name)
        if record is None or not self.supervisor.alive(record):
            return False
        return record.port is None or ports.port_listening(record.port, timeout=0.2)

    # ------------------------------------------------------------------ afterwards

    def heal(self, names: list[str], timeout: float, on_step: StepCallback = no_steps) -> list[str]:
        """Wait for the restart policy to bring ``names`` back; without a supervisor process
        (or when it gave up), converge the stack like ``taskscale up``."""
        if not names:
            return []
        wanted = sorted(set(names))
        state = self.supervisor.load()
        supervised = any(
            r.kind in NOT_FAULTABLE and self.supervisor.alive(r) for r in state.services.values()
        )
        if supervised:
            on_step(f"waiting for the supervisor to restart {', '.join(wanted)}")
            proc.poll_until(
                lambda: all(self.serving(n) for n in wanted), timeout, max_interval=HEAL_POLL
            )
        down = [n for n in wanted if not self.serving(n)]
        notes = []
        if down:
            on_step(f"starting {', '.join(down)} again (taskscale up)")
            try:
                self._restart(on_step)
            except TargetError as exc:
                return [f"{', '.join(down)} did not come back: {exc.message}"]
            notes.append(
                f"{', '.join(down)} did not come back by itself"
                + (" within the restart policy's time" if supervised else " (no supervisor runs)")
                + ": restarted with `taskscale up`"
            )
        still = [n for n in wanted if not self.serving(n)]
        notes += [
            f"{name} is still down after the drill: `taskscale up` starts it" for name in still
        ]
        return notes

    def read_tasks(self, ids: list[int]) -> dict[int, TaskRow]:
        import psycopg

        primary = self.nodes.primary_name()
        database = self.project.credentials().postgres_db
        try:
            with self.nodes.node(primary).connect(dbname=database, timeout=READ_TIMEOUT_S) as conn:
                rows = conn.execute(TASKS_SQL, (ids,)).fetchall()
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()
            raise TargetError(
                f"cannot read tasks from the primary {primary}: {first[0] if first else exc}"
            ) from exc
        return {
            int(r[0]): (str(r[1]), None if r[2] is None else str(r[2]), str(r[3])) for r in rows
        }
