"""The stack's supervisor process: restarts crashed services while no taskscale command runs.

``taskscale up`` starts it (the ``supervisor`` row of ``status``, its log in
``logs/supervisor.log``) and ``down`` stops it before anything else. It applies the restart
policy (``policy``) to every recorded service:

- **Detection**: one pidfd per service (``pidfd_open``, Linux 5.3+). A pidfd becomes readable
  the instant its process exits, child or not, so the supervisor sleeps in ``poll`` and needs
  no polling of pids; the start time is checked when the pidfd is opened, so a reused pid is
  never mistaken for the service.
- **Exit status**: the supervisor is the parent of every process it restarts (and a
  subreaper, so replicas forked from its zygote are adopted by it): it reaps them and records
  "exit 1" or "SIGKILL". A process started by a command is not its child, and ends "unknown".
- **The lock**: it changes the stack only under the stack's lock, after reading state.json
  again. Commands that stop, replace or scale services forget them before they release the
  lock, so what the supervisor then finds dead was not stopped on purpose. Commands that find
  the supervisor holding the lock wait for it (``state.SUPERVISOR_LOCK_WAIT``).
- **Replicas**: restarted by a fork of a warm zygote (``preload.Zygote``): ~0.3 s to ready
  instead of ~1.7 s; a plain interpreter when the zygote is not there.
- **Its own death**: the services run in sessions of their own and keep running; the zygote
  exits with it (its stdin closes). ``status`` shows the supervisor dead, ``up`` starts a new
  one, which watches the same processes through new pidfds.
- **Cost**: asleep in ``poll``; it wakes twice a second to reap and to see whether state.json
  changed (a ``stat``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from taskscale import __version__, proc
from taskscale.errors import TaskscaleError
from taskscale.targets import ports
from taskscale.targets.local import postgres, preload, probes, router
from taskscale.targets.local.fleet import current_slot
from taskscale.targets.local.policy import RestartPolicy
from taskscale.targets.local.state import (
    SUPERVISOR_OWNER,
    ServiceRecord,
    StackState,
)
from taskscale.targets.local.supervisor import ProcessSpec, Run, Supervisor

NAME = SUPERVISOR_OWNER
# Seconds between wake-ups when nothing happens (reap, look at state.json).
IDLE_POLL = 0.5
# While a command holds the lock, or a restarted service is not ready yet.
BUSY_POLL = 0.05
READY_PROBE_TIMEOUT = 0.3
ZYGOTE_LIFETIME = 6 * 3600.0
ZYGOTE_MARGIN = 600.0
# A young zygote may still be importing when the first replica is due.
ZYGOTE_FORK_TIMEOUT = 15.0
PR_SET_CHILD_SUBREAPER = 36

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
                self.handle(run, record, now)
            live = {(r.key, r.pid) for r in run.state.services.values()}
            for stale in [k for k in self.exits if k not in live]:
                self.exits.pop(stale, None)
                self.due.pop(stale, None)
        return True

    def handle(self, run: Run, record: ServiceRecord, now: float) -> None:
        key = (record.key, record.pid)
        exited_at = self.exits.setdefault(key, now)
        how = proc.describe_exit(self.codes.get(record.pid))
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


class Watcher:
    """The OS side: one pidfd per recorded service, reaping, and the loop."""

    def __init__(self, keeper: Keeper) -> None:
        self.keeper = keeper
        self.poller = select.poll()
        self.fds: dict[int, ServiceRecord] = {}
        self.watched: dict[Key, int] = {}
        self.signature: tuple[int, int, int] | None = None
        self.stop = False
        read, write = os.pipe()
        os.set_blocking(write, False)
        os.set_blocking(read, False)
        self.wakeup = read
        signal.set_wakeup_fd(write)
        self.poller.register(read, select.POLLIN)

    def refresh(self) -> None:
        """Watch what state.json records now (when it changed since the last look)."""
        try:
            st = os.stat(self.keeper.supervisor.state_file.path)
            signature: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            signature = None
        if signature == self.signature and signature is not None:
            return
        self.signature = signature
        try:
            state = self.keeper.supervisor.load()
        except TaskscaleError as exc:
            log.warning("cannot read the state: %s", exc)
            return
        if not self.keeper.ours(state):
            self.keeper.stale = True
            return
        wanted = {
            (r.key, r.pid): r
            for r in state.services.values()
            if r.kind != NAME and not r.crash_loop
        }
        for key in [k for k in self.watched if k not in wanted]:
            self._unwatch(self.watched[key])
        for key, record in wanted.items():
            if key not in self.watched:
                self._watch(record)

    def _watch(self, record: ServiceRecord) -> None:
        try:
            fd = os.pidfd_open(record.pid)
        except ProcessLookupError:
            self.keeper.exited(record)
            return
        if not self.keeper.supervisor.alive(record):  # a zombie, or the pid of another process
            os.close(fd)
            self.keeper.exited(record)
            return
        self.fds[fd] = record
        self.watched[(record.key, record.pid)] = fd
        self.poller.register(fd, select.POLLIN)

    def _unwatch(self, fd: int) -> ServiceRecord:
        record = self.fds.pop(fd)
        self.watched.pop((record.key, record.pid), None)
        self.poller.unregister(fd)
        os.close(fd)
        return record

    def timeout(self, now: float, lock_busy: bool) -> float:
        if lock_busy or self.keeper.recovering:
            return BUSY_POLL
        due = self.keeper.next_due()
        if due is not None:
            return max(0.0, min(IDLE_POLL, due - now))
        return IDLE_POLL

    def run(self) -> None:
        lock_busy = False
        self.refresh()
        while not self.stop and not self.keeper.stale:
            events = self.poller.poll(self.timeout(self.keeper.clock(), lock_busy) * 1000)
            self.keeper.reaped(proc.reap_children())
            for fd, _ in events:
                if fd == self.wakeup:
                    with contextlib.suppress(BlockingIOError):
                        os.read(fd, 512)
                elif fd in self.fds:
                    self.keeper.exited(self._unwatch(fd))
            if self.stop:
                break
            self.refresh()
            if self.keeper.pending(self.keeper.clock()):
                lock_busy = not self.keeper.act()
                self.signature = None  # we (may have) changed state.json: watch the new pids
                self.refresh()
            else:
                lock_busy = False
            self.keeper.check_recovered()


class Zygotes:
    """The warm zygote replicas are forked from, started again when it dies or ages."""

    def __init__(self, python: str, root: Path, supervisor: Supervisor) -> None:
        self.python = python
        self.root = root
        self.supervisor = supervisor
        self.zygote: preload.Zygote | None = None

    def ensure(self) -> preload.Zygote:
        if self.zygote is None or not self.zygote.usable(ZYGOTE_MARGIN):
            self.close()
            self.zygote = preload.Zygote(self.python, self.root, ZYGOTE_LIFETIME)
        return self.zygote

    def fork(self, spec: ProcessSpec) -> int:
        replica = preload.ReplicaSpec(
            port=spec.port or 0,
            log=self.supervisor.log_path(spec.name),
            env=spec.env or {},
            argv=preload.uvicorn_args(spec.argv),
        )
        try:
            return self.ensure().fork(replica, ZYGOTE_FORK_TIMEOUT)
        finally:
            self.ensure()  # never wait for a new one when the next replica is due

    def close(self) -> None:
        if self.zygote is not None:
            self.zygote.close()
            self.zygote = None


# ``-c``, not ``-m``: the package imports this module first, and runpy warns about that.
_ENTRY = "import sys; from taskscale.targets.local.daemon import main; sys.exit(main())"


def argv(
    state_dir: Path, python: str, root: Path, policy: RestartPolicy, ready: float
) -> list[str]:
    """How ``up`` starts the supervisor process (taskscale's own interpreter). The version is
    part of it, so ``up`` after an upgrade replaces a supervisor running the old code."""
    return [
        sys.executable, "-c", _ENTRY,
        "--taskscale-version", __version__,
        "--state-dir", os.fspath(state_dir),
        "--python", python,
        "--root", os.fspath(root),
        "--ready-timeout", repr(ready),
        *policy.to_argv(),
    ]  # fmt: skip


def ensure(supervisor: Supervisor, run: Run, spec: ProcessSpec, enabled: bool) -> bool:
    """Run the supervisor process from ``spec`` unless it already runs from it (``up``); with
    the policy off, stop it. True when it was started now."""
    current = run.state.named(NAME)
    if current is not None:
        if enabled and supervisor.alive(current) and current.argv == spec.argv:
            return False
        supervisor.stop([current])
        run.forget([current])
    if not enabled:
        return False
    supervisor.spawn(run, spec)
    return True


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("not a subreaper (errno %d): zygote replicas end 'unknown'", ctypes.get_errno())


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="taskscale-supervisor")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--python", required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--ready-timeout", type=float, default=30.0)
    parser.add_argument("--taskscale-version", default=__version__)
    parser.add_argument("--max-restarts", type=int, default=5)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--backoff-base", type=float, default=0.5)
    parser.add_argument("--backoff-max", type=float, default=10.0)
    options = parser.parse_args(sys.argv[1:] if args is None else args)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    _become_subreaper()
    policy = RestartPolicy(
        max_restarts=options.max_restarts,
        window=options.window,
        backoff_base=options.backoff_base,
        backoff_max=options.backoff_max,
    )
    supervisor = Supervisor(options.state_dir, ready_timeout=options.ready_timeout)
    zygotes = Zygotes(options.python, options.root, supervisor)
    keeper = Keeper(
        supervisor,
        policy,
        owner_pid=os.getpid(),
        fork_replica=zygotes.fork,
        ready=service_ready,
        ready_timeout=options.ready_timeout,
    )
    watcher = Watcher(keeper)

    def stop(signum: int, _frame: object) -> None:
        watcher.stop = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "supervising %s (restart policy: %d restarts within %gs, back-off up to %gs)",
        options.state_dir,
        policy.max_restarts,
        policy.window,
        policy.backoff_max,
    )
    try:
        if supervisor.load().of_kind("app"):
            zygotes.ensure()
        watcher.run()
    finally:
        zygotes.close()
    log.info("stopped" if watcher.stop else "no longer the stack's supervisor: exiting")
    return 0
