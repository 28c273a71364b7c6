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
from typing import Any, cast

import psutil

from taskscale import proc
from taskscale.errors import ConfigError, TargetError
from taskscale.targets.model import ServiceKind, Slot

STATE_VERSION = 1
# Allowed difference between the recorded and the current process start time. psutil derives it
# from the boot time and the process's start tick, so it is stable to well under a second.
START_TIME_TOLERANCE = 0.5


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
    def locked(self) -> Iterator[None]:
        """Hold an exclusive lock so two ``up``/``down`` never change the stack at once."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        lock_path = self.state_dir / "lock"
        with open(lock_path, "a+", encoding="ascii") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                raise TargetError(
                    f"another taskscale command (pid {holder}) is changing this stack",
                    hint="wait for it to finish, then try again",
                ) from None
            try:
                fh.seek(0)
                fh.truncate()
                fh.write(str(os.getpid()))
                fh.flush()
                yield
            finally:
                fh.truncate(0)
                fcntl.flock(fh, fcntl.LOCK_UN)
