"""The restart policy applied to one stack: what the supervisor process decides, and does,
under the stack's lock when a service exited.

``Keeper`` holds no OS waiting: the supervisor process (``daemon.Watcher``) tells it which
process exited and calls ``act``; unit tests drive it with a fake ``ProcessRunner``. A restart
is the service's recorded ``ProcessSpec`` (a replica forked from the warm zygote when one is
given), its record replaced in one write with the restart counted; a crash loop is left
stopped and marked for ``status``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from taskscale import proc
from taskscale.errors import TaskscaleError
from taskscale.targets import ports
from taskscale.targets.local import postgres, probes, router
from taskscale.targets.local.fleet import current_slot
from taskscale.targets.local.policy import RestartPolicy
from taskscale.targets.local.state import SUPERVISOR_OWNER, ServiceRecord, StackState
from taskscale.targets.local.supervisor import ProcessSpec, Run, Supervisor

NAME = SUPERVISOR_OWNER
READY_PROBE_TIMEOUT = 0.3

log = logging.getLogger("taskscale.supervisor")

Key = tuple[str, int]  # (record key, pid): one process of one service


def _marker(path: Path, text: str) -> None:
    """A line in a service's own log, so ``taskscale logs SERVICE`` shows its restarts."""
    with contextlib.suppress(OSError), open(path, "a", encoding="utf-8") as fh:
        fh.write(f"[taskscale supervisor {time.strftime('%Y-%m-%dT%H:%M:%S')}] {text}\n")


class Keeper:
    """The restart policy applied to one stack: decisions under the lock, no OS waiting.

    The OS side (``Watcher``: pidfds, reaping, the loop) tells it when a process exited;
    unit tests drive it with a fake ``ProcessRunner`` instead."""

    def __init__(
        self,
        supervisor: Supervisor,
        policy: RestartPolicy,
        *,
        owner_pid: int,
        fork_replica: Callable[[ProcessSpec], int] | None = None,
        ready: Callable[[ServiceRecord], bool] | None = None,
        ready_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.supervisor = supervisor
        self.policy = policy
        self.owner_pid = owner_pid
        self.fork_replica = fork_replica
        self.ready = ready or supervisor.alive
        self.ready_timeout = ready_timeout
        self.clock = clock
        self.exits: dict[Key, float] = {}  # noted exits, not handled yet
        self.due: dict[Key, float] = {}  # backed-off restarts
        self.codes: dict[int, int] = {}  # pid -> exit code of reaped children
        self.skipped: set[Key] = set()  # no spec recorded: cannot restart
        self.recovering: dict[str, tuple[ServiceRecord, float]] = {}
        self.stale = False  # another supervisor (or none) is recorded: stop

    # ------------------------------------------------------------------ what happened

    def exited(self, record: ServiceRecord, at: float | None = None) -> None:
        self.exits.setdefault((record.key, record.pid), self.clock() if at is None else at)

    def reaped(self, codes: dict[int, int]) -> None:
        self.codes.update(codes)

    def pending(self, now: float) -> bool:
        waiting = [k for k in self.exits if k not in self.due and k not in self.skipped]
        return bool(waiting) or any(t <= now for t in self.due.values())

    def next_due(self) -> float | None:
        return min(self.due.values(), default=None)

    def ours(self, state: StackState) -> bool:
        record = state.named(NAME)
        return record is not None and record.pid == self.owner_pid

    # ------------------------------------------------------------------ acting

    def act(self) -> bool:
        """Handle every dead service under the lock; False when a command holds it."""
        with self.supervisor.state_file.try_locked(NAME) as holder:
            if holder is not None:
                return False
            run = Run(self.supervisor.load(), self.supervisor.state_file)
            if not self.ours(run.state):
                self.stale = True
                return True
            now = self.clock()
            for record in list(run.state.services.values()):
                key = (record.key, record.pid)
                if record.kind == NAME or record.crash_loop or key in self.skipped:
                    continue
                if self.supervisor.alive(record):
                    continue
                try:
                    self.handle(run, record, now)
                except (TaskscaleError, OSError) as exc:
                    self.failed(run, record, now, exc)
            live = {(r.key, r.pid) for r in run.state.services.values()}
            for stale in [k for k in self.exits if k not in live]:
                self.exits.pop(stale, None)
                self.due.pop(stale, None)
        return True

    def handle(self, run: Run, record: ServiceRecord, now: float) -> None:
        key = (record.key, record.pid)
        exited_at = self.exits.setdefault(key, now)
        how = proc.describe_exit(self.codes.get(record.pid))
        if how == "unknown" and record.last_exit is not None:
            how = record.last_exit  # learnt about this process before (an earlier attempt)
        decision = self.policy.decide(record.restart_times, exited_at)
        if decision.action == "give-up":
            record.crash_loop = True
            record.last_exit = how
            record.restart_at = None
            run.state_file.save(run.state)
            self._forget(key, record.pid)
            text = (
                f"{record.name} exited ({how}) after {decision.recent} restarts within "
                f"{self.policy.window:g}s: a crash loop; not restarting it (fix it, then "
                "`taskscale up`)"
            )
            log.warning(text)
            _marker(record.log_path, text)
            return
        if decision.due > now:
            if key not in self.due:
                self.due[key] = decision.due
                record.restart_at = decision.due
                record.last_exit = how
                run.state_file.save(run.state)
                log.info(
                    "%s exited (%s); restarting in %.1fs (back-off)",
                    record.name,
                    how,
                    decision.due - now,
                )
            return
        self.restart(run, record, how, exited_at, now)

    def failed(self, run: Run, record: ServiceRecord, now: float, exc: BaseException) -> None:
        """A restart that could not even start (a program gone, a full disk): it counts as a
        restart, so the crash-loop limit ends the attempts; the supervisor itself goes on."""
        log.warning("%s could not be started again: %s", record.name, exc)
        if record.key not in run.state.services:  # removed before the spawn failed
            run.state.add(record)
        record.restarts += 1
        record.restart_times = [*self.policy.recent(record.restart_times, now), now]
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        record.last_exit = f"not restarted: {reason}"
        run.state_file.save(run.state)
        self._forget((record.key, record.pid), record.pid)

    def restart(
        self, run: Run, record: ServiceRecord, how: str, exited_at: float, now: float
    ) -> ServiceRecord | None:
        key = (record.key, record.pid)
        spec = self.supervisor.spec(record)
        if spec is None:
            self.skipped.add(key)
            log.warning(
                "%s exited (%s) but was started before restarts were recorded: "
                "`taskscale up` starts it again",
                record.name,
                how,
            )
            return None
        self.supervisor.runner.kill_leftovers(record)
        if record.kind == "lb":
            router.before_restart(self.supervisor.state_file.state_dir)
        elif record.kind == "postgres" and record.port is not None:
            state_dir = self.supervisor.state_file.state_dir
            socket_dir = postgres.socket_dir_for(state_dir)
            if postgres.remove_stale_lock_files(spec.argv, socket_dir, record.port, record.pid):
                log.info("%s: removed the dead postmaster's lock files", record.name)
        pid = self._fork(spec) if record.kind == "app" else None

        def counted(new: ServiceRecord) -> None:
            new.restarts = record.restarts + 1
            new.restart_times = [*self.policy.recent(record.restart_times, now), now]
            new.last_exit = how

        # Replaced in one write of the state (same key, spec rewritten): nobody reading it sees
        # the service missing or half restarted.
        run.state.remove(record)
        new = (
            self.supervisor.spawn(run, spec, counted)
            if pid is None
            else self.supervisor.adopt(run, spec, pid, counted)
        )
        self._forget(key, record.pid)
        text = (
            f"{record.name} exited ({how}); started again as pid {new.pid} (restart {new.restarts})"
        )
        log.info("%s, %.2fs after the exit", text, self.clock() - exited_at)
        _marker(new.log_path, text)
        if new.kind == "lb":
            self._restore_routing(run.state, new)
        self.recovering[new.key] = (new, exited_at)
        return new

    def _fork(self, spec: ProcessSpec) -> int | None:
        if self.fork_replica is None:
            return None
        try:
            return self.fork_replica(spec)
        except (TaskscaleError, OSError, ValueError) as exc:
            log.warning("%s: the zygote failed (%s); starting a fresh interpreter", spec.name, exc)
            return None

    def _restore_routing(self, state: StackState, record: ServiceRecord) -> None:
        apps = state.of_kind("app")
        try:
            if router.restore_routing(
                self.supervisor.state_file.state_dir,
                Path(record.argv[0]),
                len(apps),
                current_slot(state),
            ):
                log.info("nginx routes to %d replicas again", len(apps))
        except TaskscaleError as exc:
            log.warning("could not restore nginx's routing: %s", exc)

    def _back_behind_nginx(self, record: ServiceRecord) -> None:
        # Under the lock: a command may be setting nginx's key (scale, rollout) right now,
        # and it sets the key itself anyway.
        with self.supervisor.state_file.try_locked(NAME) as holder:
            if holder is not None:
                return
            live = self.supervisor.load().services.get(record.key)
            if live is None or live.pid != record.pid:
                return
            state_dir = self.supervisor.state_file.state_dir
            try:
                if router.forget_failures(state_dir):
                    log.info("%s is back behind nginx (fresh passive-check state)", record.name)
            except TaskscaleError as exc:
                log.warning("could not put %s back behind nginx: %s", record.name, exc)

    def _forget(self, key: Key, pid: int) -> None:
        self.exits.pop(key, None)
        self.due.pop(key, None)
        self.codes.pop(pid, None)

    def check_recovered(self) -> None:
        """Log when each restarted service is ready again (the time a user waited); a ready
        replica is put back behind nginx at once (``router.forget_failures``)."""
        now = self.clock()
        for key, (record, exited_at) in list(self.recovering.items()):
            if self.ready(record):
                log.info("%s ready %.2fs after it exited", record.name, now - exited_at)
                del self.recovering[key]
                if record.kind == "app":
                    self._back_behind_nginx(record)
            elif now - exited_at > self.ready_timeout:
                log.warning("%s not ready %.0fs after it exited", record.name, now - exited_at)
                del self.recovering[key]


def service_ready(record: ServiceRecord) -> bool:
    """Ready again: a replica answers /readyz, a service with a port listens, the worker runs."""
    if record.kind == "app" and record.port is not None:
        return probes.status(record.port, "/readyz", READY_PROBE_TIMEOUT) == 200
    if record.port is not None:
        return ports.port_listening(record.port)
    return record.alive()
