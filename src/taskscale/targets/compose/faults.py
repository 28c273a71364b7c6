"""Fault injection on the compose target, through the Docker SDK.

``kill`` is SIGKILL to the container's main process (a crash; see ``kill``), ``stop`` is ``docker
pause`` (the cgroup freezer: every process of the container stops at once, connections hang)
and ``resume`` ``docker unpause``. Services are named as the drill's other targets name them:
the compose service (``postgres``, ``redis``, ``worker``, ``nginx``, ``kafka``) and, for the
scaled ones, the service and the container's number (``app-1``, ``postgres-standby-2``).

What brings a killed container back is its ``restart: unless-stopped`` policy (Docker counts
the restarts: ``restarts``); ``heal`` waits for it and starts whatever stayed down. Compose
has no promotion, so a drill that kills the primary runs with ``--failover none`` here.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from taskscale import proc
from taskscale.errors import TargetError
from taskscale.targets.capabilities import FaultInjector, FaultTarget, Injected, Role, TaskRow
from taskscale.targets.model import ServiceKind, StepCallback, no_steps

if TYPE_CHECKING:
    from taskscale.targets.compose.pg import Primary


class ComposeStack(Protocol):
    """What the faults need of the compose target (no import of it: it imports this)."""

    @property
    def client(self) -> Any: ...

    def containers(self, service: str | None = None) -> list[Any]: ...

    def primary(self) -> Primary: ...


SCALED = frozenset({"app", "postgres-standby"})
NUMBER_LABEL = "com.docker.compose.container-number"
HEAL_POLL = 0.25
# psql -A prints NULL as an empty string: \N tells a missing description from an empty one.
TASKS_SQL = (
    "SELECT id, title, coalesce(description, E'\\\\N'), status FROM tasks WHERE id IN ({ids})"
)


def _local_engine() -> bool:
    """Whether the engine's processes are this machine's (a unix socket, no remote host)."""
    return os.environ.get("DOCKER_HOST", "unix://").startswith("unix://")


def _call(what: str, action: Any) -> Any:
    """One SDK call; its many exception types become one TargetError line."""
    try:
        return action()
    except Exception as exc:  # docker.errors.*, requests.*: one cause, several types
        first = str(exc).strip().splitlines()
        raise TargetError(f"{what} failed: {first[0] if first else type(exc).__name__}") from exc


class ComposeFaults(FaultInjector):
    def __init__(
        self,
        stack: ComposeStack,
        kinds: Mapping[str, ServiceKind],
        service_label: str,
    ) -> None:
        """``kinds``: the compose service -> its kind; ``service_label``: the label naming it."""
        self.target = stack
        self._kinds = kinds
        self._service_label = service_label

    # ------------------------------------------------------------------ what runs

    def _name(self, container: Any) -> str:
        service = str(container.labels.get(self._service_label, container.name))
        if service in SCALED:
            return f"{service}-{container.labels.get(NUMBER_LABEL, '1')}"
        return service

    def _containers(self) -> dict[str, Any]:
        return {
            self._name(c): c
            for c in self.target.containers()
            if c.labels.get(self._service_label) in self._kinds
            and self._kinds[c.labels.get(self._service_label)] != "job"
        }

    def _container(self, name: str) -> Any:
        container = self._containers().get(name)
        if container is None:
            raise TargetError(f"{name} is not running: no fault injected")
        return container

    def targets(self) -> list[FaultTarget]:
        running = {n: c for n, c in self._containers().items() if c.status == "running"}
        if not running:
            raise TargetError(
                "the compose stack is not running",
                hint="start it with `taskscale up --target compose`",
            )
        found = []
        for name, container in sorted(running.items()):
            service = container.labels.get(self._service_label)
            role: Role | None = None
            if service == "postgres":
                role = "primary"
            elif service == "postgres-standby":
                role = "standby"
            found.append(FaultTarget(name, self._kinds[service], role))
        return found

    # ------------------------------------------------------------------ faults

    def kill(self, target: FaultTarget) -> Injected:
        """SIGKILL to the container's main process when the engine runs on this machine: a
        crash, which the restart policy answers. ``docker kill`` counts as a deliberate stop
        that the policy ignores, so it is the fallback for a remote engine (``heal`` starts
        the container afterwards)."""
        container = self._container(target.name)
        _call(f"docker inspect {container.name}", container.reload)
        pid = int(container.attrs.get("State", {}).get("Pid") or 0)
        if pid > 0 and _local_engine() and proc.pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            else:
                detail = f"SIGKILL to {container.name}'s main process (pid {pid})"
                return self._injected(target, container, "kill", detail)
        _call(f"docker kill {container.name}", container.kill)
        detail = f"docker kill {container.name} (Docker's restart policy ignores it)"
        return self._injected(target, container, "kill", detail)

    def stop(self, target: FaultTarget) -> Injected:
        container = self._container(target.name)
        _call(f"docker pause {container.name}", container.pause)
        return self._injected(target, container, "stop", f"docker pause {container.name}")

    def _injected(self, target: FaultTarget, container: Any, kind: str, detail: str) -> Injected:
        return Injected(
            service=target.name,
            kind="kill" if kind == "kill" else "stop",
            at=time.time(),
            detail=detail,
            handle=str(container.id),
        )

    def resume(self, injected: Injected) -> None:
        client = self.target.client
        try:
            container = client.containers.get(injected.handle)
        except Exception:  # gone (removed by `down`): nothing is frozen any more
            return
        if container.status == "paused":
            _call(f"docker unpause {container.name}", container.unpause)

    def _state(self, name: str) -> tuple[str, str | None]:
        container = self._containers().get(name)
        if container is None:
            return "missing", None
        state = container.attrs.get("State", {})
        health = state.get("Health")
        return str(container.status), health.get("Status") if isinstance(health, dict) else None

    def serving(self, name: str) -> bool:
        status, health = self._state(name)
        return status == "running" and health in (None, "healthy")

    def restarts(self) -> dict[str, int]:
        """Docker's count of restarts by the containers' restart policy."""
        return {n: int(c.attrs.get("RestartCount", 0)) for n, c in self._containers().items()}

    # ------------------------------------------------------------------ afterwards

    def heal(self, names: list[str], timeout: float, on_step: StepCallback = no_steps) -> list[str]:
        wanted = sorted(set(names))
        if not wanted:
            return []
        on_step(f"waiting for Docker to restart {', '.join(wanted)}")
        proc.poll_until(
            lambda: all(self._state(n)[0] == "running" for n in wanted), timeout, HEAL_POLL
        )
        notes = []
        for name in wanted:
            container = self._containers().get(name)
            if container is None or container.status == "running":
                continue
            on_step(f"starting {name} again (docker start)")
            try:
                _call(f"docker start {container.name}", container.start)
            except TargetError as exc:
                notes.append(f"{name} is still down after the drill: {exc.message}")
                continue
            notes.append(f"{name} did not come back by itself: started with `docker start`")
        return notes

    def read_tasks(self, ids: list[int]) -> dict[int, TaskRow]:
        if not ids:
            return {}
        listed = ",".join(str(int(i)) for i in ids)  # integers only: nothing to quote
        rows = self.target.primary().run(TASKS_SQL.format(ids=listed))
        return {
            int(r[0]): (r[1], None if r[2] == "\\N" else r[2], r[3]) for r in rows if len(r) == 4
        }
