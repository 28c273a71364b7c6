"""The local target's restart policy, without a process: the pure decisions (back-off, crash-loop
limit, window), and the supervisor process's ``Keeper`` applying them to a stack through the
fake runner of test_local_orchestration (which service restarts how, under the stack's lock,
what ``status`` then shows). tests/integration/test_local_restarts.py runs it for real."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from taskscale.errors import MissingBinary
from taskscale.targets.local import daemon, postgres, router
from taskscale.targets.local.health import Health
from taskscale.targets.local.keeper import Keeper
from taskscale.targets.local.policy import RestartPolicy
from taskscale.targets.local.state import SUPERVISOR_OWNER, StateFile
from taskscale.targets.local.supervisor import ProcessSpec, Run
from tests.unit.test_local_orchestration import PYTHON, Stack, project, stack

__all__ = ["project", "stack"]  # fixtures used here

POLICY = RestartPolicy(max_restarts=3, window=60.0, backoff_base=0.5, backoff_max=10.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------- the policy


def test_first_restart_is_immediate_then_the_back_off_doubles_up_to_its_cap() -> None:
    policy = RestartPolicy(max_restarts=10, window=600.0, backoff_base=0.5, backoff_max=3.0)
    times: list[float] = []
    delays = []
    now = 0.0
    for _ in range(6):
        decision = policy.decide(times, now)
        assert decision.action in ("restart", "wait")
        delays.append(decision.due - now)
        now = decision.due
        times.append(now)
    assert delays == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]


def test_max_restarts_within_the_window_is_a_crash_loop() -> None:
    decision = POLICY.decide([10.0, 11.0, 12.0], 13.0)
    assert (decision.action, decision.recent) == ("give-up", 3)


def test_restarts_older_than_the_window_are_forgotten() -> None:
    decision = POLICY.decide([10.0, 11.0, 12.0], 12.0 + 61.0)
    assert (decision.action, decision.recent) == ("restart", 0)
    assert POLICY.recent([10.0, 70.0, 100.0], 120.0) == [70.0, 100.0]


def test_the_policy_round_trips_through_the_supervisor_processes_options() -> None:
    options = POLICY.to_argv()
    assert options == [
        "--max-restarts", "3", "--window", "60.0", "--backoff-base", "0.5", "--backoff-max", "10.0"
    ]  # fmt: skip


# ---------------------------------------------------------------------- the keeper


SUPERVISOR_PID = 999


def _supervised(stack: Stack, replicas: int = 2, clock: Clock | None = None) -> Keeper:
    """A stack brought up through the fleet, with a supervisor record naming the keeper."""
    stack.up(replicas)
    with stack.supervisor.session() as run:
        stack.runner.running.add(SUPERVISOR_PID)
        spec = ProcessSpec(SUPERVISOR_OWNER, "supervisor", ["supervise"])
        stack.supervisor.adopt(run, spec, SUPERVISOR_PID)
    forks: list[str] = []

    def fork(spec: ProcessSpec) -> int:
        forks.append(spec.name)
        pid = stack.runner._new(spec.name)
        stack.events.append(("zygote", spec.name, str(pid)))
        return pid

    keeper = Keeper(
        stack.supervisor,
        POLICY,
        owner_pid=SUPERVISOR_PID,
        fork_replica=fork,
        clock=clock or Clock(),
    )
    stack.events.clear()
    return keeper


def _crash(stack: Stack, keeper: Keeper, key: str, code: int | None = -9) -> int:
    record = stack.supervisor.load().services[key]
    stack.runner.running.discard(record.pid)
    if code is not None:
        keeper.reaped({record.pid: code})
    keeper.exited(record)
    return record.pid


def test_a_crashed_replica_is_forked_again_with_its_spec_and_counted(stack: Stack) -> None:
    keeper = _supervised(stack)
    before = stack.supervisor.load().services["app-2@blue"]
    spec_before = stack.supervisor.spec(before)
    _crash(stack, keeper, "app-2@blue")
    assert keeper.pending(keeper.clock())
    assert keeper.act()
    after = stack.supervisor.load().services["app-2@blue"]
    assert after.pid != before.pid
    assert (after.port, after.slot, after.restarts, after.last_exit) == (
        before.port,
        "blue",
        1,
        "SIGKILL",
    )
    assert stack.supervisor.spec(after) == spec_before  # same argv, env, cwd
    assert stack.events[0] == ("cleanup", "app-2")  # its process group's leftovers first
    assert stack.events[1][:2] == ("zygote", "app-2")
    assert not keeper.pending(keeper.clock())
    assert "app-2@blue" in keeper.recovering


def test_the_worker_and_the_data_services_are_spawned_again(stack: Stack) -> None:
    keeper = _supervised(stack, replicas=1)
    _crash(stack, keeper, "worker", code=1)
    keeper.act()
    worker = stack.supervisor.load().services["worker"]
    assert (worker.restarts, worker.last_exit) == (1, "exit 1")
    assert [e[:2] for e in stack.events] == [("cleanup", "worker"), ("spawn", "worker")]


def test_a_process_that_was_not_our_child_ends_unknown(stack: Stack) -> None:
    keeper = _supervised(stack, replicas=1)
    _crash(stack, keeper, "app-1@blue", code=None)
    keeper.act()
    assert stack.supervisor.load().services["app-1@blue"].last_exit == "unknown"


def test_back_off_then_give_up_after_max_restarts(stack: Stack, tmp_path: Path) -> None:
    clock = Clock()
    keeper = _supervised(stack, replicas=1, clock=clock)
    key = "worker"
    # Restart 1: at once.
    _crash(stack, keeper, key, code=3)
    keeper.act()
    assert stack.supervisor.load().services[key].restarts == 1
    # Restart 2: due 0.5 s after the exit; nothing happens before.
    clock.now += 1.0
    _crash(stack, keeper, key, code=3)
    keeper.act()
    waiting = stack.supervisor.load().services[key]
    assert waiting.restart_at == clock.now + 0.5 and not stack.runner.alive(waiting)
    assert keeper.next_due() == clock.now + 0.5
    assert not keeper.pending(clock.now + 0.4)
    clock.now += 0.5
    assert keeper.pending(clock.now)
    keeper.act()
    assert stack.supervisor.load().services[key].restarts == 2
    # Restart 3 after 1 s, then the third crash within the window is a crash loop.
    _crash(stack, keeper, key, code=3)
    keeper.act()
    clock.now += 1.0
    keeper.act()
    assert stack.supervisor.load().services[key].restarts == 3
    stack.events.clear()
    _crash(stack, keeper, key, code=3)
    keeper.act()
    given_up = stack.supervisor.load().services[key]
    assert given_up.crash_loop and given_up.last_exit == "exit 3"
    assert not keeper.pending(clock.now + 100)
    keeper.act()
    assert not any(e[0] == "spawn" for e in stack.events)  # never restarted again
    # status names it, with its restarts, last exit and log.
    health = Health(stack.fleet.project, stack.supervisor)
    state = stack.supervisor.load()
    rows = {s.name: s for s in health.statuses(state)}
    assert (rows[key].state, rows[key].restarts, rows[key].last_exit) == ("crash-loop", 3, "exit 3")
    notes = health.notes(state, list(rows.values()), None)
    assert any(
        "worker is in a crash loop: 3 restarts within 60s, last exit exit 3" in n for n in notes
    )
    # `up` starts it afresh: a new record, counters reset.
    stack.up(1)
    fresh = stack.supervisor.load().services[key]
    assert stack.runner.alive(fresh) and (fresh.restarts, fresh.crash_loop) == (0, False)


def test_nothing_changes_while_a_command_holds_the_lock(stack: Stack) -> None:
    keeper = _supervised(stack, replicas=1)
    pid = _crash(stack, keeper, "worker")
    with stack.supervisor.session():
        assert keeper.act() is False
    assert stack.supervisor.load().services["worker"].pid == pid
    assert keeper.act() is True
    assert stack.supervisor.load().services["worker"].pid != pid


def test_a_service_a_command_stopped_is_not_restarted(stack: Stack) -> None:
    keeper = _supervised(stack, replicas=2)
    record = stack.supervisor.load().services["app-2@blue"]
    stack.up(1)  # scale in: app-2 stops and is forgotten under the lock
    keeper.exited(record)
    stack.events.clear()
    keeper.act()
    assert stack.events == []
    assert "app-2@blue" not in stack.supervisor.load().services
    assert not keeper.pending(keeper.clock())


def test_a_rollout_is_not_mistaken_for_crashes(stack: Stack) -> None:
    keeper = _supervised(stack, replicas=2)
    old = [stack.supervisor.load().services[k] for k in ("app-1@blue", "app-2@blue", "worker")]
    stack.rollout()
    for record in old:
        keeper.exited(record)
    stack.events.clear()
    keeper.act()
    assert stack.events == []
    assert sorted(stack.supervisor.load().services) == [
        "app-1@green", "app-2@green", "supervisor", "worker"
    ]  # fmt: skip


def test_a_supervisor_that_is_no_longer_recorded_stops(stack: Stack) -> None:
    keeper = _supervised(stack, replicas=1)
    with stack.supervisor.session() as run:
        run.forget([run.state.services[SUPERVISOR_OWNER]])
    assert keeper.act() is True
    assert keeper.stale


def test_a_service_without_a_recorded_spec_is_left_for_up(stack: Stack) -> None:
    keeper = _supervised(stack, replicas=1)
    record = stack.supervisor.load().services["worker"]
    (stack.supervisor.state_file.state_dir / "specs" / "worker.json").unlink()
    _crash(stack, keeper, "worker")
    stack.events.clear()
    keeper.act()
    keeper.act()
    assert stack.events == []
    assert stack.supervisor.load().services["worker"].pid == record.pid
    assert not keeper.pending(keeper.clock())
    health = Health(stack.fleet.project, stack.supervisor)
    rows = {s.name: s.state for s in health.statuses(stack.supervisor.load())}
    assert rows["worker"] == "dead"  # not "restarting": nothing will


def test_nginx_restarts_without_its_stale_control_socket(stack: Stack) -> None:
    keeper = _supervised(stack, replicas=1)
    state_dir = stack.supervisor.state_file.state_dir
    with stack.supervisor.session() as run:
        stack.supervisor.spawn(run, ProcessSpec("nginx", "lb", ["/nonexistent/nginx"], 1))
    socket = router.control_socket(state_dir)
    socket.parent.mkdir(parents=True, exist_ok=True)
    socket.write_text("")
    _crash(stack, keeper, "nginx")
    keeper.act()
    assert not socket.exists()
    assert stack.supervisor.load().services["nginx"].restarts == 1


def test_status_shows_restarting_while_supervised_and_dead_without(stack: Stack) -> None:
    keeper = _supervised(stack, replicas=1)
    _crash(stack, keeper, "worker")
    health = Health(stack.fleet.project, stack.supervisor)
    state = stack.supervisor.load()
    assert {s.name: s.state for s in health.statuses(state)}["worker"] == "restarting"
    stack.runner.running.discard(SUPERVISOR_PID)
    rows = health.statuses(state)
    assert {s.name: s.state for s in rows}["worker"] == "dead"
    notes = health.notes(state, rows, None)
    assert any("supervisor process is not running" in n for n in notes)
    assert any("dead: worker" in n for n in notes)


def test_up_starts_keeps_replaces_or_stops_the_supervisor(stack: Stack) -> None:
    spec = ProcessSpec(SUPERVISOR_OWNER, "supervisor", ["supervise", "--max-restarts", "5"])
    with stack.supervisor.session() as run:
        assert daemon.ensure(stack.supervisor, run, spec, enabled=True)
        first = run.state.services[SUPERVISOR_OWNER].pid
        assert not daemon.ensure(stack.supervisor, run, spec, enabled=True)  # same argv: kept
        changed = ProcessSpec(SUPERVISOR_OWNER, "supervisor", ["supervise", "--max-restarts", "9"])
        assert daemon.ensure(stack.supervisor, run, changed, enabled=True)
        assert run.state.services[SUPERVISOR_OWNER].pid != first
        assert not daemon.ensure(stack.supervisor, run, changed, enabled=False)
        assert SUPERVISOR_OWNER not in run.state.services


def test_commands_wait_for_the_supervisor_holding_the_lock(tmp_path: Path) -> None:
    state_file = StateFile(tmp_path)
    held = threading.Event()

    def supervisor_restart() -> None:
        with state_file.try_locked(SUPERVISOR_OWNER) as holder:
            assert holder is None
            held.set()
            time.sleep(0.3)

    thread = threading.Thread(target=supervisor_restart)
    thread.start()
    assert held.wait(5)
    start = time.monotonic()
    with state_file.locked():  # waits instead of failing
        waited = time.monotonic() - start
    thread.join()
    assert 0.1 < waited < 5
    # The supervisor does not wait for a command: it tries again later.
    with state_file.locked(), state_file.try_locked(SUPERVISOR_OWNER) as holder:
        assert holder == str(os.getpid())


def test_stale_postgres_lock_files_are_removed_only_when_they_name_the_dead_pid(
    tmp_path: Path,
) -> None:
    data, sockets = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    sockets.mkdir()
    (data / "postmaster.pid").write_text("4242\n/data\n")
    (sockets / ".s.PGSQL.5555.lock").write_text("4242\n")
    argv = ["postgres", "-D", str(data)]
    assert postgres.remove_stale_lock_files(argv, sockets, 5555, 4343) == 0
    assert (data / "postmaster.pid").exists()
    assert postgres.remove_stale_lock_files(argv, sockets, 5555, 4242) == 2
    assert not (data / "postmaster.pid").exists()
    assert not (sockets / ".s.PGSQL.5555.lock").exists()


def test_every_spawn_records_its_spec_and_forgetting_removes_it(stack: Stack) -> None:
    stack.up(1)
    state_dir = stack.supervisor.state_file.state_dir
    worker = stack.supervisor.load().services["worker"]
    spec = stack.supervisor.spec(worker)
    assert spec is not None and spec.argv[:3] == [PYTHON, "-m", "app.worker"]
    assert spec.env == {"INSTANCE_ID": "mini-worker"}
    assert (state_dir / "specs" / "worker.json").stat().st_mode & 0o777 == 0o600
    with stack.supervisor.session() as run:
        run.forget([worker])
    assert not (state_dir / "specs" / "worker.json").exists()


def test_run_records_without_a_spec_stay_readable(stack: Stack) -> None:
    state = stack.supervisor.load()
    run = Run(state, stack.supervisor.state_file)
    assert run.specs.load("nothing") is None


def test_a_ready_replica_is_put_back_behind_nginx_under_the_lock(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    flips: list[Path] = []

    def forget_failures(state_dir: Path) -> bool:
        flips.append(state_dir)
        return True

    monkeypatch.setattr(router, "forget_failures", forget_failures)
    clock = Clock()
    keeper = _supervised(stack, replicas=2, clock=clock)
    keeper.ready = lambda record: False
    _crash(stack, keeper, "app-1@blue")
    _crash(stack, keeper, "worker")
    keeper.act()
    keeper.check_recovered()
    assert flips == [] and len(keeper.recovering) == 2  # not ready yet
    keeper.ready = lambda record: True
    with stack.supervisor.session():  # a command is changing the stack: it routes itself
        keeper.check_recovered()
    assert flips == [] and keeper.recovering == {}
    _crash(stack, keeper, "app-1@blue")
    keeper.act()
    clock.now += 1.0  # past the back-off of a second restart
    keeper.act()
    keeper.check_recovered()
    assert flips == [stack.supervisor.state_file.state_dir]  # the replica, not the worker


def test_a_restart_that_cannot_start_counts_until_the_crash_loop_limit(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    keeper = _supervised(stack, replicas=1, clock=clock)
    real_spawn = stack.runner.spawn

    def spawn(
        argv: list[str], *, log_path: Path, cwd: Path | None, env: dict[str, str] | None
    ) -> int:
        if log_path.stem == "worker":
            raise MissingBinary(f"program not found: {argv[0]}")
        return real_spawn(argv, log_path=log_path, cwd=cwd, env=env)

    monkeypatch.setattr(stack.runner, "spawn", spawn)
    dead = stack.supervisor.load().services["worker"]
    _crash(stack, keeper, "worker")
    for _ in range(20):  # bounded: the limit (3 within 60 s) ends it well before
        keeper.act()
        clock.now += 2.0
    record = stack.supervisor.load().services["worker"]
    assert record.pid == dead.pid and record.crash_loop
    assert record.restarts == 3
    assert record.last_exit is not None and record.last_exit.startswith("not restarted: program")


def test_a_service_is_found_by_the_name_users_see(stack: Stack) -> None:
    """For fault injection (`taskscale drill`): pid and spec of `app-2` whatever its slot."""
    stack.up(2)
    stack.rollout()
    record = stack.supervisor.record_of("app-2")
    assert record is not None and (record.slot, record.port) == (
        "green",
        stack.base + stack.top + 1,
    )
    spec = stack.supervisor.spec(record)
    assert spec is not None and spec.slot == "green"
    assert stack.supervisor.record_of("nope") is None
