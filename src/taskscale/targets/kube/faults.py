"""Fault injection on the Kubernetes targets, through the API (the official client).

``kill`` deletes one pod with no grace period: its processes get SIGKILL at once and the
workload's controller creates a replacement, which is what a crashed node or an OOM-killed pod
looks like to the stack. ``stop`` is refused: freezing a container needs SIGSTOP to its main
process, which the kernel does not deliver to PID 1 from inside its namespace (so an exec'd
``kill -STOP 1`` does nothing), and the API has no pause.

Services are the workloads ``status`` lists (``app``, ``worker``, ``redis``,
``postgres-primary``, ``postgres-standby``, ``kafka``), each meaning its first pod, and each pod
of a workload by number (``app-1``, ``app-2``: pods sorted by name). The load generator's
workloads are not faultable. Replacement pods start from zero restarts, so the drill reports
no restart count here; the RTO says how long the replacement took.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskscale import proc
from taskscale.errors import TargetError
from taskscale.targets.capabilities import (
    FaultInjector,
    FaultKind,
    FaultTarget,
    Injected,
    Role,
    TaskRow,
)
from taskscale.targets.kube import rollout
from taskscale.targets.model import ServiceKind, StepCallback, no_steps

if TYPE_CHECKING:
    from taskscale.targets.kube.namespace import Namespace

EXEC_TIMEOUT = 15.0
HEAL_POLL = 1.0
NOT_FAULTABLE = ("locust", "migrate")
# The tasks as one JSON array (ids are integers: nothing to quote), over the local socket.
TASKS_SQL = (
    "SELECT coalesce(json_agg(json_build_object('id', id, 'title', title, 'description', "
    "description, 'status', status)), '[]') FROM tasks WHERE id = ANY('{{{ids}}}'::bigint[])"
)
PSQL = 'exec psql -XAtq -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "$1"'


def _role(workload: str) -> Role | None:
    if workload.startswith("postgres"):
        return "standby" if "standby" in workload else "primary"
    return None


class KubeFaults(FaultInjector):
    kinds: frozenset[FaultKind] = frozenset({"kill"})

    def __init__(
        self,
        namespace: Callable[[], Namespace],
        target: str,
        kind_of: Callable[[str], ServiceKind],
    ) -> None:
        """``namespace`` gives the client when it is first needed (asking for the capability
        reads no kubeconfig); ``kind_of`` maps a workload to its service kind."""
        self._namespace = namespace
        self.target = target
        self.kind_of = kind_of

    @property
    def ns(self) -> Namespace:
        return self._namespace()

    # ------------------------------------------------------------------ what runs

    def _workloads(self) -> dict[str, dict[str, Any]]:
        if not self.ns.exists():
            raise TargetError(
                f"the stack is not running: namespace {self.ns.name} does not exist",
                hint=f"start it with `taskscale up --target {self.target}`",
            )
        return {
            o["metadata"]["name"]: o
            for o in self.ns.workloads()
            if o["kind"] != "Job" and not o["metadata"]["name"].startswith(NOT_FAULTABLE)
        }

    def _pods(self, workload: dict[str, Any]) -> list[dict[str, Any]]:
        labels = workload["spec"]["selector"].get("matchLabels", {})
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        pods = self.ns.items("pods", labelSelector=selector)
        live = [
            p
            for p in pods
            if not p["metadata"].get("deletionTimestamp")
            and labels.items() <= (p["metadata"].get("labels") or {}).items()
        ]
        return sorted(live, key=lambda p: str(p["metadata"]["name"]))

    def _names(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """Service name -> (workload, pod)."""
        found: dict[str, tuple[str, dict[str, Any]]] = {}
        for name, workload in sorted(self._workloads().items()):
            pods = self._pods(workload)
            if pods:
                found[name] = (name, pods[0])
            if len(pods) > 1:
                found.update({f"{name}-{i}": (name, pod) for i, pod in enumerate(pods, 1)})
        return found

    def targets(self) -> list[FaultTarget]:
        found = [
            FaultTarget(name, self.kind_of(workload), _role(workload))
            for name, (workload, _) in self._names().items()
        ]
        if not found:
            raise TargetError(
                f"no pods run in namespace {self.ns.name}",
                hint=f"start the stack with `taskscale up --target {self.target}`",
            )
        return found

    def refusal(self, kind: FaultKind, target: FaultTarget) -> str | None:
        if kind == "stop":
            return (
                "stop (a hang) is not supported on Kubernetes: a container's main process "
                "cannot be frozen through the API; use kill (a pod delete)"
            )
        return super().refusal(kind, target)

    # ------------------------------------------------------------------ faults

    def kill(self, target: FaultTarget) -> Injected:
        entry = self._names().get(target.name)
        if entry is None:
            raise TargetError(f"{target.name} has no pod: no fault injected")
        pod = str(entry[1]["metadata"]["name"])
        self.ns.api.request(
            "DELETE", self.ns.path("pods", "v1", pod), query={"gracePeriodSeconds": 0}
        )
        return Injected(
            service=target.name,
            kind="kill",
            at=time.time(),
            detail=f"pod {pod} deleted (grace period 0)",
            handle=pod,
        )

    def stop(self, target: FaultTarget) -> Injected:
        raise TargetError(self.refusal("stop", target) or "stop is not supported")

    def resume(self, injected: Injected) -> None:
        return None  # nothing is ever frozen here

    def serving(self, name: str) -> bool:
        """The workload of ``name`` has every pod it wants ready (the replacement too)."""
        workloads = self._workloads()
        obj = workloads.get(name) or workloads.get(name.rsplit("-", 1)[0])
        if obj is None:
            return False
        progress = rollout.progress(obj)
        return progress.ready >= progress.desired > 0

    # ------------------------------------------------------------------ afterwards

    def heal(self, names: list[str], timeout: float, on_step: StepCallback = no_steps) -> list[str]:
        wanted = sorted(set(names))
        if not wanted:
            return []
        on_step(f"waiting for Kubernetes to replace {', '.join(wanted)}")
        proc.poll_until(lambda: all(self.serving(n) for n in wanted), timeout, HEAL_POLL)
        return [
            f"{name} is not ready again after the drill: see `taskscale status --target "
            f"{self.target}`"
            for name in wanted
            if not self.serving(name)
        ]

    def read_tasks(self, ids: list[int]) -> dict[int, TaskRow]:
        if not ids:
            return {}
        primary = next(
            (pod for name, (_, pod) in self._names().items() if _role(name) == "primary"), None
        )
        if primary is None:
            raise TargetError(f"no PostgreSQL primary pod in namespace {self.ns.name}")
        pod = str(primary["metadata"]["name"])
        sql = TASKS_SQL.format(ids=",".join(str(int(i)) for i in ids))
        result = self.ns.api.exec(
            self.ns.name,
            pod,
            primary["spec"]["containers"][0]["name"],
            ["sh", "-c", PSQL, "psql", sql],
            timeout=EXEC_TIMEOUT,
        )
        if result.returncode != 0:
            said = (result.stderr or result.stdout).strip().splitlines()
            raise TargetError(f"cannot read tasks from {pod}: {said[0] if said else 'psql failed'}")
        try:
            rows = json.loads(result.stdout.strip() or "[]")
            return {
                int(r["id"]): (str(r["title"]), r.get("description"), str(r["status"]))
                for r in rows
            }
        except (ValueError, KeyError, TypeError) as exc:
            raise TargetError(f"unexpected psql output from {pod}: {exc}") from exc
