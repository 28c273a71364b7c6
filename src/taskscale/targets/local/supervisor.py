"""The process supervisor of the local target: spawn, wait, stop, restart, and the record of it.

Every service of a local stack is one process started here from a ``ProcessSpec``, recorded in
``.taskscale/state.json`` at once (``Run.record``) and stopped here, with the signal and the
patience its kind needs. A ``Run`` is one command's changes under the stack's lock: when the
command fails, ``Supervisor.session`` stops exactly what that run started.

The operating system is reached only through a ``ProcessRunner`` (start, check, signal a
process), modelled on hatch's ``Platform``: the orchestration above (which service starts or
stops in which order, rollouts, scaling, healing) runs unchanged against a fake runner in fast
unit tests. The restart policy (``policy``) and the process that applies it between commands
(``daemon``) build on ``dead``, ``spec`` and ``restart`` here: every spawn records its
``ProcessSpec`` next to the state (``SpecFiles``), so a crashed service is started again
exactly as it was.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from taskscale import proc
from taskscale.errors import ServiceNotReady
from taskscale.targets.local import preload
from taskscale.targets.local.state import (
    START_TIME_TOLERANCE,
    ServiceRecord,
    SpecFiles,
    StackState,
    StateFile,
    process_start_time,
)
from taskscale.targets.model import ServiceKind, Slot

# uvicorn's graceful shutdown (seconds) for in-flight requests; the app's stop timeout adds 2.
GRACEFUL_SHUTDOWN = 10
# Stop timeouts (seconds) before SIGKILL.
STOP_TIMEOUT: dict[ServiceKind, float] = {
    "supervisor": 5.0,
    "lb": 5.0,
    "app": GRACEFUL_SHUTDOWN + 2.0,
    "worker": 10.0,
    "redis": 10.0,
    "kafka": 10.0,
    "postgres": 30.0,
}
# How each kind is asked to stop: SIGINT is PostgreSQL's "fast" shutdown (what pg_ctl -m fast
# sends): roll back open transactions, checkpoint, exit. SIGTERM to nginx is its fast stop too.
STOP_SIGNAL: dict[ServiceKind, int] = {
    "supervisor": signal.SIGTERM,
    "lb": signal.SIGTERM,
    "app": signal.SIGTERM,
    "worker": signal.SIGTERM,
    "redis": signal.SIGTERM,
    "kafka": signal.SIGTERM,
    "postgres": signal.SIGINT,
}
# A stack stops in this order (each stage in parallel): the supervisor first (nothing is
# restarted while the rest stops), then the entry point, the data last.
STOP_ORDER: tuple[tuple[ServiceKind, ...], ...] = (
    ("supervisor",),
    ("lb",),
    ("app", "worker"),
    ("redis", "kafka", "postgres"),
)
# Completes a new record before it is saved (``Supervisor.adopt``).
Amend = Callable[[ServiceRecord], None]
# Readiness probes are cheap (a refused connect until the service listens): poll often, a late
# answer costs the whole command.
READY_POLL = 0.05


class ProcessRunner:
    """Every operating-system call the supervisor makes; tests replace it with a fake."""

    def spawn(
        self,
        argv: list[str],
        *,
        log_path: Path,
        cwd: Path | None,
        env: dict[str, str] | None,
    ) -> int:
        """Start a detached process (own session), output appended to ``log_path``; its pid."""
        return proc.spawn(argv, log_path=log_path, cwd=cwd, env=env)

    def fork_replicas(
        self, python: str, cwd: Path, replicas: list[preload.ReplicaSpec], timeout: float
    ) -> list[int]:
        """Start several replicas from one preloaded launcher (``preload``); their pids."""
        return preload.fork_replicas(python, cwd, replicas, timeout)

    def start_time(self, pid: int) -> float | None:
        return process_start_time(pid)

    def alive(self, record: ServiceRecord) -> bool:
        """True while the recorded process runs (not a reused pid, not a zombie)."""
        return record.alive()

    def terminate(self, pid: int, *, timeout: float, sig: int) -> None:
        """Signal, wait up to ``timeout``, then SIGKILL."""
        proc.terminate(pid, timeout=timeout, sig=sig)

    def kill_leftovers(self, record: ServiceRecord) -> None:
        """SIGKILL what is left of a dead service's process group (e.g. nginx workers whose
        master was killed keep the port). Only processes started after the service are
        touched, so a reused pid/pgid never costs an unrelated process."""
        since = (record.proc_start or record.started_at) - START_TIME_TOLERANCE
        killed = []
        for process in psutil.process_iter(["pid", "create_time"]):
            try:
                if os.getpgid(process.pid) != record.pid or process.info["create_time"] < since:
                    continue
                process.kill()
                killed.append(process.pid)
            except (ProcessLookupError, psutil.Error):
                continue
        for pid in killed:
            proc.wait_for_exit(pid, 5.0)

    def wait_until(
        self, check: Callable[[], bool], *, timeout: float, what: str, log_path: Path | None
    ) -> None:
        proc.wait_until(
            check, timeout=timeout, what=what, log_path=log_path, max_interval=READY_POLL
        )


@dataclass(frozen=True)
class ProcessSpec:
    """How to start one service; enough to start it again (``Supervisor.restart``)."""

    name: str
    kind: ServiceKind
    argv: list[str]
    port: int | None = None
    env: dict[str, str] | None = field(default=None, repr=False)  # holds secrets
    cwd: Path | None = None
    slot: Slot | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "argv": self.argv,
            "port": self.port,
            "env": self.env,
            "cwd": os.fspath(self.cwd) if self.cwd is not None else None,
            "slot": self.slot,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessSpec:
        cwd = data.get("cwd")
        return cls(
            name=str(data["name"]),
            kind=data["kind"],
            argv=[str(a) for a in data["argv"]],
            port=data.get("port"),
            env=data.get("env"),
            cwd=Path(cwd) if cwd else None,
            slot=data.get("slot"),
        )


@dataclass
class Run:
    """One command's changes to the stack, made under its lock: the state as it goes, and the
    keys of what this command started (undone if it fails)."""

    state: StackState
    state_file: StateFile
    started: list[str] = field(default_factory=list)

    @property
    def specs(self) -> SpecFiles:
        return SpecFiles(self.state_file.state_dir)

    def record(self, record: ServiceRecord, spec: ProcessSpec | None = None) -> None:
        """Add ``record`` (started from ``spec``) to the state and save both at once (a crash
        leaves it findable, and the supervisor process can start it again)."""
        if spec is not None:
            self.specs.save(record.key, spec.to_json())
        self.state.add(record)
        self.started.append(record.key)
        self.state_file.save(self.state)

    def forget(self, records: list[ServiceRecord]) -> None:
        for record in records:
            self.state.remove(record)
        gone = {r.key for r in records}
        self.started = [k for k in self.started if k not in gone]
        self.state_file.save(self.state)
        for key in gone:
            if key not in self.state.services:
                self.specs.remove(key)


class Supervisor:
    """Starts, watches and stops the processes of one local stack."""

    def __init__(
        self,
        state_dir: Path,
        *,
        ready_timeout: float,
        runner: ProcessRunner | None = None,
    ) -> None:
        self.state_file = StateFile(state_dir)
        self.logs_dir = state_dir / "logs"
        self.ready_timeout = ready_timeout
        self.runner = runner or ProcessRunner()

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def load(self) -> StackState:
        return self.state_file.load()

    def record_of(self, name: str, state: StackState | None = None) -> ServiceRecord | None:
        """The record of the service users call ``name`` (``postgres``, ``worker``, ``app-2``
        in whichever slot it runs; during a rollout, the newest of its two)."""
        records = [r for r in (state or self.load()).services.values() if r.name == name]
        return max(records, key=lambda r: r.started_at, default=None)

    def spec(self, record: ServiceRecord) -> ProcessSpec | None:
        """How ``record`` was started (None for a stack started before specs were kept)."""
        data = SpecFiles(self.state_file.state_dir).load(record.key)
        if data is None:
            return None
        try:
            return ProcessSpec.from_json(data)
        except (KeyError, TypeError, ValueError):
            return None

    @contextlib.contextmanager
    def session(self) -> Iterator[Run]:
        """The stack locked for one command; if the command fails (or is interrupted), what
        it started is stopped again and forgotten."""
        with self.state_file.locked():
            run = Run(self.state_file.load(), self.state_file)
            try:
                yield run
            except BaseException:
                self.undo(run)
                raise

    # ------------------------------------------------------------------ start

    def spawn(self, run: Run, spec: ProcessSpec, amend: Amend | None = None) -> ServiceRecord:
        """Start ``spec`` and record it at once (undone if this run fails)."""
        log = self.log_path(spec.name)
        pid = self.runner.spawn(spec.argv, log_path=log, cwd=spec.cwd, env=spec.env)
        return self.adopt(run, spec, pid, amend)

    def adopt(
        self, run: Run, spec: ProcessSpec, pid: int, amend: Amend | None = None
    ) -> ServiceRecord:
        """Record a process started for ``spec`` by someone else (the replica launcher).
        ``amend`` completes the record before it is saved (a restart's counters), so nobody
        reading the state sees it half written."""
        record = ServiceRecord.spawned(
            spec.name,
            spec.kind,
            pid,
            spec.port,
            self.log_path(spec.name),
            spec.argv,
            slot=spec.slot,
            proc_start=self.runner.start_time(pid),
        )
        if amend is not None:
            amend(record)
        run.record(record, spec)
        return record

    def wait_ready(self, record: ServiceRecord, check: Callable[[], bool]) -> None:
        """Wait for ``check``; fail fast (with the log tail) when the process exits."""

        def ready() -> bool:
            if check():
                return True
            if not self.runner.alive(record):
                raise ServiceNotReady(
                    f"{record.name} exited while starting",
                    detail=proc.file_tail(record.log_path),
                )
            return False

        self.runner.wait_until(
            ready, timeout=self.ready_timeout, what=record.name, log_path=record.log_path
        )

    def wait_all_ready(self, checks: list[tuple[ServiceRecord, Callable[[], bool]]]) -> None:
        """``wait_ready`` for several services at once (they start concurrently)."""
        if not checks:
            return
        with ThreadPoolExecutor(max_workers=len(checks)) as pool:
            futures = [pool.submit(self.wait_ready, r, check) for r, check in checks]
            for future in futures:
                future.result()

    def restart(self, run: Run, record: ServiceRecord, spec: ProcessSpec) -> ServiceRecord:
        """Stop ``record`` (if it still runs) and start ``spec`` in its place."""
        self.stop([record])
        run.forget([record])
        return self.spawn(run, spec)

    # ------------------------------------------------------------------ watch

    def alive(self, record: ServiceRecord) -> bool:
        return self.runner.alive(record)

    def dead(self, state: StackState) -> list[ServiceRecord]:
        """Recorded services whose process is gone (crashed, killed, machine rebooted)."""
        return [r for r in state.services.values() if not self.runner.alive(r)]

    def forget_dead(self, run: Run) -> list[ServiceRecord]:
        """Forget dead services (so the caller starts them again) after clearing what their
        process groups left behind; the forgotten records."""
        dead = self.dead(run.state)
        for record in dead:
            self.runner.kill_leftovers(record)
        if dead:
            run.forget(dead)
        return dead

    # ------------------------------------------------------------------ stop

    def stop(self, records: list[ServiceRecord], sig: int | None = None) -> list[str]:
        """Signal every live record at once (``sig``, else its kind's ``STOP_SIGNAL``), wait
        for all, SIGKILL stragglers; names stopped."""
        live = [r for r in records if self.runner.alive(r)]
        for record in records:
            if record not in live:
                self.runner.kill_leftovers(record)
        if not live:
            return []
        with ThreadPoolExecutor(max_workers=len(live)) as pool:
            list(
                pool.map(
                    lambda r: self.runner.terminate(
                        r.pid, timeout=STOP_TIMEOUT[r.kind], sig=sig or STOP_SIGNAL[r.kind]
                    ),
                    live,
                )
            )
        return [r.name for r in live]

    def stop_in_order(
        self, run: Run, records: list[ServiceRecord], on_stage: Callable[[str], None] | None = None
    ) -> list[str]:
        """Stop ``records`` stage by stage (``STOP_ORDER``) and forget them; names stopped."""
        stopped: list[str] = []
        for stage in STOP_ORDER:
            batch = [r for r in records if r.kind in stage]
            if not batch:
                continue
            if on_stage is not None:
                on_stage(f"stopping {', '.join(r.name for r in batch)}")
            stopped += self.stop(batch)
            run.forget(batch)
        return stopped

    def undo(self, run: Run) -> None:
        """Stop what this run started (newest first) and forget it."""
        records = [run.state.services[k] for k in reversed(run.started) if k in run.state.services]
        with contextlib.suppress(OSError):
            self.stop_in_order(run, records)
