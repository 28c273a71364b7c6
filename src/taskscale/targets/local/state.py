"""What the local target started: ``.taskscale/state.json`` and the lock that guards it.

Each service is recorded right after it is spawned (written atomically: tmp file + rename), so a
crash of taskscale in the middle of ``up`` leaves a state file that ``status``, ``up`` and ``down``
can still act on. A record keeps the process's start time as the kernel reports it, so a pid that
was reused by an unrelated process is recognised as stale and never signalled.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import psutil

from taskscale import proc
from taskscale.errors import ConfigError, TargetError
from taskscale.targets.model import ServiceKind, Slot

STATE_VERSION = 1
# Allowed difference between the recorded and the current process start time. psutil derives it
# from the boot time and the process's start tick, so it is stable to well under a second.
START_TIME_TOLERANCE = 0.5
# The stack's supervisor process holds the lock for a restart (a spawn, at most nginx's start):
# a command that finds it holding the lock waits this long instead of failing at once.
SUPERVISOR_LOCK_WAIT = 30.0
SUPERVISOR_OWNER = "supervisor"


# Unix socket paths are limited to 107 bytes (sun_path); PostgreSQL's adds "/.s.PGSQL.NNNNN".
_SOCKET_PATH_LIMIT = 100


def runtime_dir(state_dir: Path) -> Path:
    """Where the stack's unix sockets live (PostgreSQL's, nginx's control socket).

    ``<state>/run`` unless that path is too long for a socket (deep project dirs, pytest tmp
    dirs); then a per-project ``/tmp/taskscale-<hash>``. Either way a 0700 directory.
    """
    preferred = state_dir / "run"
    if len(os.fsencode(preferred)) + len("/.s.PGSQL.65535") <= _SOCKET_PATH_LIMIT:
        return preferred
    digest = hashlib.sha256(os.fsencode(state_dir.resolve())).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"taskscale-{digest}"


def ensure_runtime_dir(state_dir: Path) -> Path:
    path = runtime_dir(state_dir)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def process_start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


@dataclass
class ServiceRecord:
    # The stable name users see (app-1..N, postgres, nginx...); app replicas of the two
    # blue/green slots share names while a rollout runs, so records are keyed by ``key``.
    name: str
    kind: ServiceKind
    pid: int
    port: int | None
    log: str
    argv: list[str]
    started_at: float = field(default_factory=time.time)
    proc_start: float | None = None
    slot: Slot | None = None
    # The restart policy's bookkeeping (written by the stack's supervisor process): restarts so
    # far, how the last process ended ("exit 1", "SIGKILL", "unknown"), when the recent restarts
    # happened (the crash-loop window), when a backed-off restart is due, and whether the
    # supervisor gave up on a crash loop.
    restarts: int = 0
    last_exit: str | None = None
    restart_times: list[float] = field(default_factory=list)
    restart_at: float | None = None
    crash_loop: bool = False

    @classmethod
    def spawned(
        cls,
        name: str,
        kind: ServiceKind,
        pid: int,
        port: int | None,
        log: Path,
        argv: list[str],
        *,
        slot: Slot | None = None,
        proc_start: float | None = None,
    ) -> ServiceRecord:
        start = proc_start if proc_start is not None else process_start_time(pid)
        return cls(name, kind, pid, port, str(log), argv, time.time(), start, slot)

    @property
    def key(self) -> str:
        """Unique in the state: the name, plus the slot for app replicas."""
        return f"{self.name}@{self.slot}" if self.slot is not None else self.name

    def alive(self) -> bool:
        """True when our process still runs under this pid (not a reused pid, not a zombie)."""
        if not proc.pid_alive(self.pid):
            return False
        if self.proc_start is None:
            return True
        current = process_start_time(self.pid)
        return current is not None and abs(current - self.proc_start) < START_TIME_TOLERANCE

    @property
    def log_path(self) -> Path:
        return Path(self.log)


@dataclass
class StackState:
    services: dict[str, ServiceRecord] = field(default_factory=dict)

    def of_kind(self, kind: ServiceKind) -> list[ServiceRecord]:
        return [s for s in self.services.values() if s.kind == kind]

    def add(self, record: ServiceRecord) -> None:
        self.services[record.key] = record

    def remove(self, record: ServiceRecord) -> None:
        self.services.pop(record.key, None)

    def named(self, name: str) -> ServiceRecord | None:
        """The record of a service that is not an app replica (postgres, nginx, worker...)."""
        return self.services.get(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "services": [asdict(s) for s in self.services.values()],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StackState:
        services: dict[str, ServiceRecord] = {}
        for raw in data.get("services", []):
            record = ServiceRecord(**cast(dict[str, Any], raw))
            services[record.key] = record
        return cls(services)


class StateFile:
    """``state.json`` in the project's state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "state.json"

    def load(self) -> StackState:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return StackState()
        try:
            return StackState.from_json(json.loads(text))
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"{self.path} is corrupt ({exc})",
                hint="stop leftover processes by hand, then delete the file",
            ) from exc

    def save(self, state: StackState) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not state.services:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    @contextlib.contextmanager
    def locked(self, owner: str = "") -> Iterator[None]:
        """Hold an exclusive lock so two ``up``/``down`` never change the stack at once.

        A second command fails at once, naming the holder; when the holder is the stack's
        supervisor process (``owner`` "supervisor", restarting a crashed service), it waits
        for it, up to ``SUPERVISOR_LOCK_WAIT``."""
        with self.try_locked(owner, wait=SUPERVISOR_LOCK_WAIT) as holder:
            if holder is not None:
                raise TargetError(
                    f"another taskscale command (pid {holder}) is changing this stack",
                    hint="wait for it to finish, then try again",
                )
            yield

    @contextlib.contextmanager
    def try_locked(self, owner: str = "", *, wait: float = 0.0) -> Iterator[str | None]:
        """The lock if it can be had: yields None while holding it, else the holder's pid
        (the caller goes on without it). Waits up to ``wait`` seconds when the supervisor
        process holds it."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        lock_path = self.state_dir / "lock"
        with open(lock_path, "a+", encoding="ascii") as fh:
            holder = _holder(fh)
            if holder is not None and holder.endswith(f" {SUPERVISOR_OWNER}") and wait > 0:
                if proc.poll_until(lambda: _take(fh), wait, max_interval=0.05):
                    holder = None
                else:
                    holder = _holder(fh) or holder
            if holder is not None:
                yield holder.split()[0] if holder.split() else holder
                return
            try:
                fh.seek(0)
                fh.truncate()
                fh.write(f"{os.getpid()} {owner}".strip())
                fh.flush()
                yield None
            finally:
                fh.truncate(0)
                fcntl.flock(fh, fcntl.LOCK_UN)


def _take(fh: IO[str]) -> bool:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(fh: IO[str]) -> str | None:
    """None once we hold the lock; else what the holder wrote ("<pid>[ <owner>]")."""
    if _take(fh):
        return None
    fh.seek(0)
    return fh.read().strip() or "another process"


class SpecFiles:
    """How each recorded service was started (argv, environment, directory), so the stack's
    supervisor process can start it again: ``.taskscale/specs/<key>.json``, mode 0600 (an
    environment holds the project's secrets, as ``.env`` does)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / "specs"

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def save(self, key: str, data: dict[str, Any]) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.dir / f".{key}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(tmp, self.path(key))

    def load(self, key: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def remove(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
