"""The local target's orchestration against a fake process runner (no process is started):
what starts and stops in which order, scale out and in, blue/green rollouts with stable names,
crash healing and the undo of a failed run. The same code runs for real in
tests/integration/test_local_stack.py; these cover its decisions in milliseconds."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from taskscale.config import Project, load_project
from taskscale.errors import ServiceNotReady
from taskscale.targets.local import LocalTarget, preload
from taskscale.targets.local.fleet import Fleet
from taskscale.targets.local.router import Router
from taskscale.targets.local.state import ServiceRecord, StackState
from taskscale.targets.local.supervisor import ProcessRunner, Run, Supervisor
from taskscale.targets.model import ProcessDetail, Slot, StepCallback
from tests.cli.conftest import write_minimal_project

PYTHON = "/usr/bin/python3"
Events = list[tuple[str, ...]]


class FakeRunner(ProcessRunner):
    """Processes that exist only as pids in a set; every call is an event."""

    def __init__(self, events: Events) -> None:
        self.events = events
        self.running: set[int] = set()
        self.next_pid = 1000
        self.fail: set[str] = set()  # names whose process dies at once

    def _new(self, name: str) -> int:
        self.next_pid += 1
        if name not in self.fail:
            self.running.add(self.next_pid)
        return self.next_pid

    def spawn(
        self, argv: list[str], *, log_path: Path, cwd: Path | None, env: dict[str, str] | None
    ) -> int:
        pid = self._new(log_path.stem)
        self.events.append(("spawn", log_path.stem, str(pid)))
        return pid

    def fork_replicas(
        self, python: str, cwd: Path, replicas: list[preload.ReplicaSpec], timeout: float
    ) -> list[int]:
        pids = [self._new(r.log.stem) for r in replicas]
        self.events.append(("fork", *(r.log.stem for r in replicas)))
        return pids

    def start_time(self, pid: int) -> float | None:
        return 1.0

    def alive(self, record: ServiceRecord) -> bool:
        return record.pid in self.running

    def terminate(self, pid: int, *, timeout: float, sig: int) -> None:
        self.running.discard(pid)
        self.events.append(("stop", str(pid), signal.Signals(sig).name))

    def kill_leftovers(self, record: ServiceRecord) -> None:
        self.events.append(("cleanup", record.name))

    def wait_until(
        self, check: Callable[[], bool], *, timeout: float, what: str, log_path: Path | None
    ) -> None:
        if not check():
            raise ServiceNotReady(f"{what} did not become ready within {timeout:g}s")


class FakeRouter(Router):
    def __init__(self, events: Events) -> None:
        self.events = events
        self.now: tuple[int, Slot] | None = None

    def route(self, run: Run, replicas: int, slot: Slot, on_step: StepCallback) -> bool:
        self.now = (replicas, slot)
        self.events.append(("route", str(replicas), slot))
        return True


class Stack:
    def __init__(self, project: Project) -> None:
        self.events: Events = []
        self.runner = FakeRunner(self.events)
        self.router = FakeRouter(self.events)
        self.supervisor = Supervisor(project.state_dir, ready_timeout=1.0, runner=self.runner)
        self.silent: set[int] = set()  # ports where nothing answers
        self.fleet = Fleet(
            project,
            self.supervisor,
            self.router,
            lambda instance: {"INSTANCE_ID": instance},
            probe=lambda port, path, timeout: None if port in self.silent else 200,
        )
        self.base = project.config.ports.app_base
        self.top = project.config.stack.max_replicas

    def up(self, replicas: int) -> Run:
        """What LocalTarget.up does with the fleet: start missing, worker, route, retire."""
        with self.supervisor.session() as run:
            self.supervisor.forget_dead(run)
            slot = self.fleet.scale(run, PYTHON, replicas, _quiet)
            self.fleet.ensure_worker(run, PYTHON, _quiet)
            self.fleet.route(run, replicas, slot, _quiet)
        return run

    def rollout(self) -> None:
        with self.supervisor.session() as run:
            self.fleet.rollout(run, PYTHON, _quiet)

    def apps(self) -> list[tuple[str, Slot | None, int | None]]:
        state = self.supervisor.load()
        return sorted((r.name, r.slot, r.port) for r in state.of_kind("app"))

    def pid(self, key: str) -> int:
        return self.supervisor.load().services[key].pid

    def names(self, kind: str) -> list[str]:
        """Names of the events of ``kind`` (spawn/fork/stop by service name)."""
        state_pids: dict[str, str] = {}
        out: list[str] = []
        for event in self.events:
            if event[0] == "spawn":
                state_pids[event[2]] = event[1]
        for event in self.events:
            if event[0] == kind == "stop":
                out.append(state_pids.get(event[1], event[1]))
            elif event[0] == kind == "spawn":
                out.append(event[1])
            elif event[0] == kind:
                out.extend(event[1:])
        return out


def _quiet(_: str) -> None:
    return None


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return load_project(write_minimal_project(tmp_path / "p"))


@pytest.fixture
def stack(project: Project) -> Stack:
    return Stack(project)


def test_scale_out_starts_replicas_ready_before_the_router_sends_them_anything(
    stack: Stack,
) -> None:
    stack.up(3)
    b = stack.base
    assert stack.apps() == [
        ("app-1", "blue", b),
        ("app-2", "blue", b + 1),
        ("app-3", "blue", b + 2),
    ]
    kinds = [e[0] for e in stack.events]
    # Three replicas forked from one launcher, the worker spawned, then routed: in that order.
    assert kinds == ["fork", "spawn", "route"]
    assert stack.events[0] == ("fork", "app-1", "app-2", "app-3")
    assert stack.router.now == (3, "blue")
    stack.events.clear()
    stack.up(4)  # one more: spawned on its own, the others untouched
    assert [e[:2] for e in stack.events] == [("spawn", "app-4"), ("route", "4")]


def test_scale_in_takes_replicas_out_of_the_router_before_stopping_them(stack: Stack) -> None:
    stack.up(3)
    app2, app3 = stack.pid("app-2@blue"), stack.pid("app-3@blue")
    stack.events.clear()
    stack.up(1)
    assert stack.events[0] == ("route", "1", "blue")
    stops = stack.events[1:]
    assert sorted(stops) == sorted([("stop", str(app2), "SIGTERM"), ("stop", str(app3), "SIGTERM")])
    assert stack.apps() == [("app-1", "blue", stack.base)]


def test_rollout_keeps_names_moves_slot_and_flips_before_stopping(stack: Stack) -> None:
    stack.up(2)
    old = [stack.pid("app-1@blue"), stack.pid("app-2@blue")]
    worker = stack.pid("worker")
    stack.events.clear()
    stack.rollout()
    green = stack.base + stack.top
    assert stack.apps() == [("app-1", "green", green), ("app-2", "green", green + 1)]
    kinds = [e[0] for e in stack.events]
    assert kinds == ["fork", "route", "stop", "stop", "stop", "spawn"]
    assert stack.events[1] == ("route", "2", "green")
    stopped = {int(e[1]) for e in stack.events if e[0] == "stop"}
    assert stopped == {*old, worker}
    assert stack.events[-1][:2] == ("spawn", "worker")
    # And back: the next rollout returns to the blue ports, same names.
    stack.rollout()
    assert stack.apps() == [("app-1", "blue", stack.base), ("app-2", "blue", stack.base + 1)]


def test_a_crashed_replica_is_forgotten_and_started_again(stack: Stack) -> None:
    stack.up(3)
    crashed = stack.pid("app-2@blue")
    stack.runner.running.discard(crashed)
    stack.events.clear()
    stack.up(3)
    assert stack.events[0] == ("cleanup", "app-2")  # its process group's leftovers
    assert [e[:2] for e in stack.events[1:]] == [("spawn", "app-2"), ("route", "3")]
    assert stack.pid("app-2@blue") != crashed
    assert [name for name, _, _ in stack.apps()] == ["app-1", "app-2", "app-3"]


def test_a_failed_start_stops_exactly_what_the_run_started(stack: Stack) -> None:
    stack.up(1)
    before = stack.pid("app-1@blue")
    stack.runner.fail.add("app-3")  # app-3 dies at once: it never answers
    stack.silent.add(stack.base + 2)
    with pytest.raises(ServiceNotReady, match="app-3 exited while starting"):
        stack.up(3)
    assert stack.apps() == [("app-1", "blue", stack.base)]
    assert stack.pid("app-1@blue") == before  # what ran before the failed run still runs
    stopped = {int(e[1]) for e in stack.events if e[0] == "stop"}
    assert before not in stopped and len(stopped) == 1  # app-2, started by the failed run


def test_down_stops_the_entry_point_first_and_the_data_last(project: Project) -> None:
    events: Events = []
    runner = FakeRunner(events)
    target = LocalTarget(project, runner=runner, router=FakeRouter(events))
    state = StackState()
    for name, kind in [
        ("postgres", "postgres"),
        ("redis", "redis"),
        ("app-1", "app"),
        ("worker", "worker"),
        ("nginx", "lb"),
    ]:
        pid = runner._new(name)
        slot: Slot | None = "blue" if kind == "app" else None
        state.add(ServiceRecord(name, kind, pid, None, f"/x/{name}.log", ["x"], slot=slot))  # type: ignore[arg-type]
    target.supervisor.state_file.save(state)
    pids = {r.pid: r.name for r in state.services.values()}
    result = target.down()
    stops = [(pids[int(e[1])], e[2]) for e in events if e[0] == "stop"]
    assert stops[0] == ("nginx", "SIGTERM")
    assert {s[0] for s in stops[1:3]} == {"app-1", "worker"}
    assert dict(stops[3:]) == {"redis": "SIGTERM", "postgres": "SIGINT"}
    assert sorted(result.stopped) == sorted(pids.values())
    assert target.supervisor.load().services == {}


def test_status_names_replicas_app_1_to_n_whatever_their_slot(project: Project) -> None:
    events: Events = []
    runner = FakeRunner(events)
    target = LocalTarget(project, runner=runner, router=FakeRouter(events))
    state = StackState()
    for index in (1, 2):
        pid = runner._new(f"app-{index}")
        state.add(ServiceRecord(f"app-{index}", "app", pid, None, "/x.log", ["x"], slot="green"))
    target.supervisor.state_file.save(state)
    status = target.status()
    assert [(s.name, s.detail) for s in status.services] == [
        ("app-1", ProcessDetail(pid=1001, slot="green")),
        ("app-2", ProcessDetail(pid=1002, slot="green")),
    ]
    assert status.replicas == 2
    row = status.to_dict()["services"][0]
    assert (row["name"], row["slot"], row["pid"], row["runtime"]) == (
        "app-1",
        "green",
        1001,
        "process",
    )
