"""The stack's supervisor process: restarts crashed services while no taskscale command runs.

What it decides when a service exited is ``keeper``; this module is the process around it.

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
- **Replicas**: restarted by a fork of a warm zygote (``preload.Zygote``): 0.3-0.7 s to ready
  instead of 2-3 s; a plain interpreter when the zygote is not there.
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
from pathlib import Path

from taskscale import __version__, proc
from taskscale.errors import TaskscaleError
from taskscale.targets.local import preload
from taskscale.targets.local.keeper import NAME, Keeper, Key, log, service_ready
from taskscale.targets.local.policy import RestartPolicy
from taskscale.targets.local.state import ServiceRecord
from taskscale.targets.local.supervisor import ProcessSpec, Run, Supervisor

__all__ = ["NAME", "Keeper", "argv", "ensure", "main", "service_ready"]

# Seconds between wake-ups when nothing happens (reap, look at state.json).
IDLE_POLL = 0.5
# While a command holds the lock, or a restarted service is not ready yet.
BUSY_POLL = 0.05
ZYGOTE_LIFETIME = 6 * 3600.0
ZYGOTE_MARGIN = 600.0
# A young zygote may still be importing when the first replica is due.
ZYGOTE_FORK_TIMEOUT = 15.0
PR_SET_CHILD_SUBREAPER = 36


class Watcher:
    """The OS side: one pidfd per recorded service, reaping, and the loop."""

    def __init__(self, keeper: Keeper) -> None:
        self.keeper = keeper
        self.poller = select.poll()
        self.fds: dict[int, ServiceRecord] = {}
        self.watched: dict[Key, int] = {}
        self.signature: tuple[int, int, int] | None = None
        self.stop = False
        self.lock_busy = False  # a command held the lock at the last attempt: retry soon
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
        first = True
        while not self.stop and not self.keeper.stale:
            try:
                if first:
                    self.refresh()
                    first = False
                self.step()
            except Exception:
                # One failure (a state file being rewritten, a probe) must not end the
                # supervision of the whole stack: log it, look again at the next wake-up.
                log.exception("supervisor step failed; going on")
                self.signature = None
                self.lock_busy = False

    def step(self) -> None:
        """One wake-up: wait for an exit (or the next due restart), then act on it."""
        timeout = self.timeout(self.keeper.clock(), self.lock_busy)
        events = self.poller.poll(timeout * 1000)
        self.keeper.reaped(proc.reap_children())
        for fd, _ in events:
            if fd == self.wakeup:
                with contextlib.suppress(BlockingIOError):
                    os.read(fd, 512)
            elif fd in self.fds:
                self.keeper.exited(self._unwatch(fd))
        if self.stop:
            return
        self.refresh()
        self.lock_busy = False
        if self.keeper.pending(self.keeper.clock()):
            self.lock_busy = not self.keeper.act()
            self.signature = None  # we (may have) changed state.json: watch the new pids
            self.refresh()
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
