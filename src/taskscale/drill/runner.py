"""The fault thread: injects the schedule while the load runs, watches each fault's service,
and fails over a killed primary (``--failover auto``) through the target's ``Promotion`` (the
code of ``taskscale replicate failover``).

Times count from Locust's test start (``begin``). Every fault is followed by a probe thread
that asks the target whether the service serves (``FaultInjector.serving``: every 10 ms for
the first second, then every 50 ms) and notes when it stopped and when it served again. A
stop is resumed at its end, or at ``finish`` (the load ended, failed or was interrupted):
nothing stays frozen. ``finish`` also waits for a failover under way (it is bounded by its own
timeouts, and leaving it half done would leave the stack without a primary).
"""

from __future__ import annotations

import contextlib
import heapq
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from taskscale.drill.measure import Observed
from taskscale.drill.schedule import FailoverMode, PlannedFault
from taskscale.errors import TaskscaleError
from taskscale.report.model import FailoverResult
from taskscale.targets.capabilities import FaultInjector, Injected, Promotion
from taskscale.targets.model import StepCallback, no_steps

FAST_PROBE_S = 0.01
FAST_PROBE_FOR_S = 1.0
PROBE_S = 0.05
MANUAL_POLL_S = 0.5
FAILOVER_JOIN_S = 300.0
JOIN_S = 10.0

Notify = Callable[[str], None]


@dataclass
class _Fault:
    """One fault while the drill runs (mutated by the fault and probe threads)."""

    planned: PlannedFault
    injected: Injected | None = None
    error: str | None = None
    resumed_at: float | None = None
    down_at: float | None = None
    back_at: float | None = None
    failover: FailoverResult | None = None
    # The restart policy's count for the service when the probe saw it back (a failover may
    # replace the record, and its count, before the drill ends).
    restarts_seen: int | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def observed(self) -> Observed | None:
        if self.injected is None:
            return None
        return Observed(
            kind=self.planned.kind,
            service=self.planned.target.name,
            spec=self.planned.label,
            injected_at=self.injected.at,
            detail=self.injected.detail,
            resumed_at=self.resumed_at,
            probe_down_at=self.down_at,
            probe_back_at=self.back_at,
            failover=self.failover,
            note=self.error,
        )


class FaultRunner:
    def __init__(
        self,
        injector: FaultInjector,
        planned: list[PlannedFault],
        *,
        failover: FailoverMode,
        promotion: Promotion | None,
        on_step: StepCallback = no_steps,
        on_note: Notify = no_steps,
    ) -> None:
        """Failover times are epoch seconds here (``measure`` puts them on the timeline)."""
        self.injector = injector
        self.faults = [_Fault(p) for p in planned]
        self.mode = failover
        self.promotion = promotion
        self.on_step = on_step
        self.on_note = on_note
        self._started = threading.Event()
        self._cancel = threading.Event()
        self._t0 = 0.0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._failovers: list[threading.Thread] = []
        self._main = threading.Thread(target=self._run, name="drill-faults", daemon=True)

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        self._main.start()

    def begin(self, t0: float) -> None:
        """Locust's test started at ``t0`` (epoch seconds): the schedule counts from there."""
        if not self._started.is_set():
            self._t0 = t0
            self._started.set()

    def finish(self) -> list[Observed]:
        """Stop injecting, resume every stopped service, let a failover finish; what was
        injected, in order."""
        self._cancel.set()
        self._main.join(JOIN_S)
        self.resume_all()
        for thread in self._failovers:
            thread.join(FAILOVER_JOIN_S)
        for thread in self._threads:
            thread.join(JOIN_S)
        return [o for f in self.faults if (o := f.observed()) is not None]

    def resume_all(self) -> None:
        for fault in self.faults:
            self._resume(fault)

    @property
    def killed(self) -> list[str]:
        return [
            f.planned.target.name for f in self.faults if f.injected and f.planned.kind == "kill"
        ]

    @property
    def restarts_seen(self) -> dict[str, int]:
        """Per service, the highest restart count the probes saw when it came back."""
        seen: dict[str, int] = {}
        for fault in self.faults:
            if fault.restarts_seen is not None:
                name = fault.planned.target.name
                seen[name] = max(seen.get(name, 0), fault.restarts_seen)
        return seen

    @property
    def failovers(self) -> list[FailoverResult]:
        return [f.failover for f in self.faults if f.failover is not None]

    # ------------------------------------------------------------------ the schedule

    def _run(self) -> None:
        while not self._started.wait(0.05):
            if self._cancel.is_set():
                return
        actions: list[tuple[float, int, str, int]] = []
        for index, fault in enumerate(self.faults):
            heapq.heappush(actions, (self._t0 + fault.planned.at_s, 0, "inject", index))
            if fault.planned.kind == "stop":
                heapq.heappush(actions, (self._t0 + fault.planned.end_s, 1, "resume", index))
        while actions:
            at, _, action, index = heapq.heappop(actions)
            if self._cancel.wait(max(at - time.time(), 0.0)):
                return
            fault = self.faults[index]
            if action == "inject":
                self._inject(fault)
            else:
                self._resume(fault)

    def _inject(self, fault: _Fault) -> None:
        planned = fault.planned
        try:
            if planned.kind == "kill":
                fault.injected = self.injector.kill(planned.target)
            else:
                fault.injected = self.injector.stop(planned.target)
        except TaskscaleError as exc:
            fault.error = f"not injected: {exc.message}"
            self.on_note(f"{planned.label}: {fault.error}")
            fault.done.set()
            return
        self.on_note(f"injected {planned.label} ({fault.injected.detail})")
        watcher = threading.Thread(
            target=self._watch,
            args=(fault,),
            name=f"drill-probe-{planned.target.name}",
            daemon=True,
        )
        self._threads.append(watcher)
        watcher.start()

    def _resume(self, fault: _Fault) -> None:
        with self._lock:
            if fault.injected is None or fault.planned.kind != "stop" or fault.resumed_at:
                return
            try:
                self.injector.resume(fault.injected)
            except TaskscaleError as exc:
                fault.error = f"resume failed: {exc.message}"
                self.on_note(f"{fault.planned.label}: {fault.error}")
                return
            fault.resumed_at = time.time()
        self.on_note(f"resumed {fault.planned.target.name}")

    # ------------------------------------------------------------------ probes

    def _serving(self, name: str) -> bool:
        try:
            return self.injector.serving(name)
        except TaskscaleError:
            return False

    def _watch(self, fault: _Fault) -> None:
        """Note when the service stopped serving and when it served again; start the
        failover of a killed primary as soon as it is seen down."""
        assert fault.injected is not None
        name = fault.planned.target.name
        began = fault.injected.at
        primary_kill = fault.planned.kind == "kill" and fault.planned.target.role == "primary"
        while not self._cancel.is_set():
            now = time.time()
            up = self._serving(name)
            if not up and fault.down_at is None:
                fault.down_at = now
                if primary_kill and self.mode != "none":
                    self._primary_down(fault)
            elif up and fault.down_at is not None and fault.back_at is None:
                fault.back_at = now
                with contextlib.suppress(TaskscaleError):
                    fault.restarts_seen = self.injector.restarts().get(name)
            if fault.back_at is not None or (fault.down_at is None and now - began > 5.0):
                break  # back, or never seen down (a stop: the process still listens)
            if self._cancel.wait(FAST_PROBE_S if now - began < FAST_PROBE_FOR_S else PROBE_S):
                break
        fault.done.set()

    def _primary_down(self, fault: _Fault) -> None:
        old = fault.planned.target.name
        if self.mode == "manual":
            fault.failover = FailoverResult(mode="manual", old_primary=old)
            self.on_note(
                f"the primary {old} is down: run `taskscale replicate failover` in another "
                "shell; the drill measures until the load ends"
            )
            thread = threading.Thread(target=self._await_manual, args=(fault,), daemon=True)
        else:
            fault.failover = FailoverResult(mode="auto", old_primary=old, started_at_s=time.time())
            thread = threading.Thread(target=self._fail_over, args=(fault,), daemon=True)
        self._failovers.append(thread)
        thread.start()

    def _fail_over(self, fault: _Fault) -> None:
        assert fault.failover is not None and self.promotion is not None
        old = fault.failover.old_primary
        self.on_note(f"{old} is down: failing over (as `taskscale replicate failover --force`)")
        try:
            # force: the drill saw the primary down; a restart policy may be bringing it back
            # meanwhile, and it is fenced rather than left next to the promoted standby.
            change = self.promotion.failover(None, True, self.on_step)
        except TaskscaleError as exc:
            fault.failover = fault.failover.model_copy(
                update={"finished_at_s": time.time(), "error": exc.message}
            )
            self.on_note(f"the failover failed: {exc.message}")
            return
        fault.failover = fault.failover.model_copy(
            update={"finished_at_s": time.time(), "new_primary": change.status.primary}
        )
        self.on_note(f"failed over: {change.status.primary} is the primary")

    def _await_manual(self, fault: _Fault) -> None:
        assert fault.failover is not None
        old = fault.failover.old_primary
        while not self._cancel.wait(MANUAL_POLL_S):
            with contextlib.suppress(TaskscaleError):
                primary = next(
                    (t.name for t in self.injector.targets() if t.role == "primary"), None
                )
                if primary is not None and primary != old:
                    fault.failover = fault.failover.model_copy(
                        update={"finished_at_s": time.time(), "new_primary": primary}
                    )
                    return
