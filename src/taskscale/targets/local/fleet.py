"""The app fleet of a local stack: N uvicorn replicas behind the router, the worker, rollouts.

Replicas are called ``app-1`` .. ``app-N`` whatever happens to them; what changes is their
*slot*. The blue slot listens on ``app_base + i``, the green one ``max_replicas`` ports higher.
Scaling adds or removes replicas in the current slot (started and ready before the router
sends them anything; out of the router before they stop). A rollout (new environment: a new
primary, new standbys) starts a full set in the other slot, flips the router to it in one step
and only then stops the old set gracefully, so no client request fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from taskscale.config import Project
from taskscale.errors import TaskscaleError
from taskscale.targets import ports
from taskscale.targets.local import appenv, preload, probes
from taskscale.targets.local.router import Router, slot_offset
from taskscale.targets.local.state import ServiceRecord, StackState
from taskscale.targets.local.supervisor import ProcessSpec, Run, Supervisor
from taskscale.targets.model import Slot, StepCallback

WORKER = "worker"
# A request nginx routed an instant before a scale-in may not have connected yet: replicas
# stay up this long after the router stops sending to them (nothing can be polled for it).
DRAIN_GRACE = 0.2
READY_PROBE_TIMEOUT = 1.0

# The app's environment for one process (its INSTANCE_ID given).
EnvFactory = Callable[[str], dict[str, str]]
# GET a path on a loopback port: the HTTP status, or None when nothing answers.
Probe = Callable[[int, str, float], int | None]


def replica_name(index: int) -> str:
    """Replica ``index`` (0-based) is called ``app-<index+1>`` in either slot."""
    return f"app-{index + 1}"


def replica_index(name: str) -> int:
    return int(name.rsplit("-", 1)[1]) - 1


def other(slot: Slot) -> Slot:
    return "green" if slot == "blue" else "blue"


def current_slot(state: StackState) -> Slot:
    """The slot the replicas run in: green only when every replica is green."""
    apps = state.of_kind("app")
    return "green" if apps and all(r.slot == "green" for r in apps) else "blue"


class Fleet:
    """Starts, scales, rolls out and retires the app replicas and the worker."""

    def __init__(
        self,
        project: Project,
        supervisor: Supervisor,
        router: Router,
        env: EnvFactory,
        *,
        probe: Probe = probes.status,
    ) -> None:
        self.project = project
        self.config = project.config
        self.supervisor = supervisor
        self.router = router
        self.env = env
        self.probe = probe

    # ------------------------------------------------------------------ layout

    def slot(self, state: StackState) -> Slot:
        """The slot the replicas run in: green only when every replica is green."""
        return current_slot(state)

    def port(self, name: str, slot: Slot) -> int:
        offset = slot_offset(slot, self.config.stack.max_replicas)
        return self.config.ports.app_base + offset + replica_index(name)

    def ports(self, replicas: int, slot: Slot) -> dict[int, str]:
        """port -> replica name of ``replicas`` replicas in ``slot``."""
        names = [replica_name(i) for i in range(replicas)]
        return {self.port(name, slot): name for name in names}

    def replicas(self, state: StackState, slot: Slot) -> list[ServiceRecord]:
        apps = [r for r in state.of_kind("app") if r.slot == slot]
        return sorted(apps, key=lambda r: replica_index(r.name))

    def missing(self, state: StackState, replicas: int, slot: Slot) -> list[str]:
        present = {r.name for r in self.replicas(state, slot)}
        return [replica_name(i) for i in range(replicas) if replica_name(i) not in present]

    def surplus(self, state: StackState, replicas: int, slot: Slot) -> list[ServiceRecord]:
        """Replicas beyond ``replicas`` in ``slot``, and any left in the other slot."""
        return [
            r for r in state.of_kind("app") if r.slot != slot or replica_index(r.name) >= replicas
        ]

    def replica_spec(self, python: str, name: str, slot: Slot) -> ProcessSpec:
        port = self.port(name, slot)
        return ProcessSpec(
            name,
            "app",
            appenv.replica_argv(python, port),
            port,
            env=self.env(f"{self.config.project.name}-{name}"),
            cwd=self.project.root,
            slot=slot,
        )

    def worker_spec(self, python: str) -> ProcessSpec:
        return ProcessSpec(
            WORKER,
            "worker",
            appenv.worker_argv(python),
            self.config.ports.metrics,  # WORKER_PORT: its /healthz, /readyz and /metrics
            env=self.env(f"{self.config.project.name}-{WORKER}"),
            cwd=self.project.root,
        )

    # ------------------------------------------------------------------ replicas

    def start(
        self,
        run: Run,
        python: str,
        names: list[str],
        slot: Slot,
        on_step: StepCallback,
        launcher: preload.Launcher | None = None,
    ) -> list[ServiceRecord]:
        """Start replicas ``names`` in ``slot`` and wait until each answers /readyz. Several
        are forked from one preloaded launcher (``preload``; the one given, already importing,
        or a new one); when that fails, each gets its own interpreter."""
        if not names:
            return []
        on_step(f"starting {', '.join(names)}")
        specs = [self.replica_spec(python, name, slot) for name in names]
        records: list[ServiceRecord] = []
        if len(specs) > 1:
            records = self._fork(run, python, specs, launcher)
        for spec in specs[len(records) :]:
            records.append(self.supervisor.spawn(run, spec))
        on_step(f"waiting for {', '.join(names)} (/readyz)")
        self.supervisor.wait_all_ready([(r, self._readyz(r)) for r in records])
        return records

    def _readyz(self, record: ServiceRecord) -> Callable[[], bool]:
        port = record.port

        def check() -> bool:
            return port is not None and self.probe(port, "/readyz", READY_PROBE_TIMEOUT) == 200

        return check

    def _fork(
        self,
        run: Run,
        python: str,
        specs: list[ProcessSpec],
        launcher: preload.Launcher | None,
    ) -> list[ServiceRecord]:
        replica_specs = [
            preload.ReplicaSpec(
                port=spec.port or 0,
                log=self.supervisor.log_path(spec.name),
                env=spec.env or {},
                argv=preload.uvicorn_args(spec.argv),
            )
            for spec in specs
        ]
        try:
            if launcher is not None:
                pids = launcher.fork(replica_specs)
            else:
                pids = self.supervisor.runner.fork_replicas(
                    python, self.project.root, replica_specs, self.config.stack.ready_timeout
                )
        except (TaskscaleError, ValueError):
            return []  # fall back to one interpreter per replica
        return [self.supervisor.adopt(run, s, pid) for s, pid in zip(specs, pids, strict=True)]

    def retire(
        self, run: Run, records: list[ServiceRecord], drained: bool, on_step: StepCallback
    ) -> None:
        """Stop replicas the router no longer sends to, and forget them. ``drained``: the
        router's change took effect at once (dynamic nginx); give in-flight connects a moment."""
        if not records:
            return
        if drained:
            time.sleep(DRAIN_GRACE)
        on_step(f"stopping {', '.join(r.name for r in records)}")
        self.supervisor.stop(records)
        run.forget(records)

    def scale(
        self,
        run: Run,
        python: str,
        replicas: int,
        on_step: StepCallback,
        launcher: preload.Launcher | None = None,
    ) -> Slot:
        """Start the replicas missing from the current slot (not routed yet); the slot."""
        slot = self.slot(run.state)
        self.start(run, python, self.missing(run.state, replicas, slot), slot, on_step, launcher)
        return slot

    def route(self, run: Run, replicas: int, slot: Slot, on_step: StepCallback) -> None:
        """Point the router at ``replicas`` replicas of ``slot``, then retire the rest."""
        surplus = self.surplus(run.state, replicas, slot)
        drained = self.router.route(run, replicas, slot, on_step)
        self.retire(run, surplus, drained, on_step)

    def rollout(self, run: Run, python: str, on_step: StepCallback) -> None:
        """Replace every replica (blue/green), then the worker, so they pick up a new
        environment (e.g. DATABASE_URL after a failover, DATABASE_REPLICA_URLS).

        The new replicas start in the other slot, become ready, the router flips to them in
        one step, and only then are the old ones stopped (gracefully: in-flight requests
        finish). Restarting replicas in place instead makes nginx's passive health checks mark
        them failed one after the other until none is live, which clients see as 502s.
        """
        current = self.slot(run.state)
        count = len(self.replicas(run.state, current))
        if count:
            new = other(current)
            ports.check_ports_free(self.ports(count, new))
            names = [replica_name(i) for i in range(count)]
            self.start(run, python, names, new, on_step)
            on_step("switching nginx to the new replicas")
            self.route(run, count, new, on_step)
        worker = run.state.named(WORKER)
        if worker is not None:
            on_step("restarting the worker (new environment)")
            self.supervisor.restart(run, worker, self.worker_spec(python))

    # ------------------------------------------------------------------ worker

    def ensure_worker(self, run: Run, python: str, on_step: StepCallback) -> None:
        """Start the worker unless it runs. It has no port: the caller checks it is still
        alive once the stack is ready, so a crash on import is caught without its own wait."""
        if run.state.named(WORKER) is not None:
            return
        on_step("starting the worker")
        self.supervisor.spawn(run, self.worker_spec(python))
