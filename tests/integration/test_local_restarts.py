"""The local target's restart policy on real processes: the stack's supervisor process brings
back every kind of service after a SIGKILL (replica, worker, nginx, Redis, PostgreSQL and the
Kafka broker of a `--broker kafka` project) without a taskscale command, gives up on a crash
loop and says so in `status`, leaves a merely stopped (SIGSTOP) service alone, is stopped by
`down` with nothing left behind, and is noticed and replaced when it is killed itself.

Every wait is a bounded poll; times are measured in bench/restart.py, not asserted here.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest
import redis

from taskscale import proc
from taskscale.config import load_project
from taskscale.scaffold import NewProjectSpec, create_project
from taskscale.targets.local import LocalTarget
from taskscale.targets.local.keeper import service_ready
from taskscale.targets.local.ports import port_free
from taskscale.targets.local.state import ServiceRecord, StateFile
from tests.client_loop import api_headers
from tests.conftest import CliRunner
from tests.integration.conftest import recorded_pids, set_free_ports, stopping_stack

pytestmark = pytest.mark.slow

COME_BACK = 30.0  # generous bound on a shared 2-core machine; bench/restart.py measures


def _record(project: Path, name: str) -> ServiceRecord | None:
    state = StateFile(project / ".taskscale").load()
    return next((r for r in state.services.values() if r.name == name), None)


def _pid(project: Path, name: str) -> int:
    record = _record(project, name)
    assert record is not None, f"{name} is not recorded"
    return record.pid


def _back(project: Path, name: str, old_pid: int) -> ServiceRecord:
    """Wait until ``name`` runs again under a new pid and is ready; its record."""

    def check() -> bool:
        record = _record(project, name)
        return (
            record is not None
            and record.pid != old_pid
            and record.alive()
            and service_ready(record)
        )

    proc.wait_until(
        check,
        timeout=COME_BACK,
        what=f"{name} restarted by the supervisor",
        log_path=project / ".taskscale" / "logs" / "supervisor.log",
    )
    record = _record(project, name)
    assert record is not None
    return record


def _status(run_cli: CliRunner, project: Path) -> dict[str, dict[str, object]]:
    result = run_cli("status", "--json", "--project", str(project))
    assert result.exit_code == 0, result.stderr
    return {s["name"]: s for s in json.loads(result.stdout)["services"]}


def _instances(api: str, count: int) -> Counter[str]:
    """Which replica answered each of ``count`` GETs through nginx ("HTTP 502" when none)."""
    with httpx.Client(base_url=api, timeout=5, trust_env=False) as client:
        answers = (client.get("/healthz") for _ in range(count))
        return Counter(r.headers.get("x-instance-id", f"HTTP {r.status_code}") for r in answers)


def _why(project: Path) -> str:
    """The supervisor's account, for a failed assertion."""
    return proc.file_tail(project / ".taskscale" / "logs" / "supervisor.log", 15) or "(no log)"


def _set_restart(project: Path, **settings: object) -> None:
    config = project / "taskscale.toml"
    text = config.read_text()
    for key, value in settings.items():
        line = f"{key} = {json.dumps(value)}"
        lines = text.splitlines()
        index = next(i for i, existing in enumerate(lines) if existing.startswith(f"{key} = "))
        lines[index] = line
        text = "\n".join(lines) + "\n"
    config.write_text(text)


def _dsn(project: Path) -> str:
    config = load_project(project)
    creds = config.credentials()
    return (
        f"host=127.0.0.1 port={config.config.ports.postgres} dbname={creds.postgres_db} "
        f"user={creds.postgres_user} password={creds.postgres_password}"
    )


def _busy_backend(project: Path) -> threading.Thread:
    """A thread whose PostgreSQL backend runs a long CPU-bound query (ended by the restart)."""
    dsn = _dsn(project)
    started = threading.Event()

    def query() -> None:
        with contextlib.suppress(psycopg.Error), psycopg.connect(dsn) as conn:
            conn.execute("SET statement_timeout = '60s'")
            started.set()
            conn.execute("SELECT count(*) FROM generate_series(1, 2000000000)")

    thread = threading.Thread(target=query, daemon=True)
    thread.start()
    assert started.wait(10)

    def running() -> bool:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%generate_series%'"
                " AND state = 'active' AND pid <> pg_backend_pid()"
            ).fetchone()
            return row is not None and row[0] == 1

    assert proc.poll_until(running, 10)
    return thread


@pytest.fixture(scope="module")
def kafka_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A `--broker kafka` project with 3 replicas: every kind of service the policy covers."""
    root = tmp_path_factory.mktemp("restarts")
    project = create_project(
        NewProjectSpec(name="rtest", output_dir=root, broker="kafka", git=False)
    ).path
    ports = set_free_ports(project)
    with stopping_stack(project):
        LocalTarget(load_project(project)).up(3)
        yield project, f"http://127.0.0.1:{ports['api']}"


def test_every_kind_of_service_comes_back_by_itself(
    run_cli: CliRunner, kafka_stack: tuple[Path, str]
) -> None:
    project, api = kafka_stack
    services = _status(run_cli, project)
    assert services["kafka"]["state"] == "running"  # listed, and the app uses it
    assert services["supervisor"]["state"] == "running"
    worker_env = (project / ".taskscale" / "specs" / "worker.json").read_text()
    assert '"BROKER": "kafka"' in worker_env and '"KAFKA_ENABLE_IDEMPOTENCE": "false"' in worker_env
    worker_log = project / ".taskscale" / "logs" / "worker.log"
    assert proc.poll_until(lambda: '"broker":"kafka"' in worker_log.read_text(), 30)
    headers = api_headers(api)  # logged in now: the database is about to be killed
    with httpx.Client(base_url=api, timeout=10, trust_env=False, headers=headers) as client:
        created = client.post("/tasks/", json={"title": "survives restarts"})
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]

    # Redis keeps its persistence settings: a key in its AOF survives the kill.
    password = load_project(project).credentials().redis_password
    cache = redis.Redis(port=load_project(project).config.ports.redis, password=password)
    cache.set("survives", "yes")
    aof = project / ".taskscale" / "redis"
    assert proc.poll_until(  # appendfsync everysec
        lambda: any(b"survives" in f.read_bytes() for f in aof.rglob("*.aof*") if f.is_file()), 5
    )

    for name in ("app-2", "worker", "nginx", "redis", "kafka", "postgres"):
        old = _pid(project, name)
        if name == "postgres":
            # A backend busy in a CPU-bound query does not notice its postmaster's death and
            # keeps the old shared memory attached: the restart must not trip over it.
            busy = _busy_backend(project)
        os.kill(old, signal.SIGKILL)
        record = _back(project, name, old)
        assert record.restarts == 1, (name, _why(project))
        row = _status(run_cli, project)[name]
        assert (row["state"], row["restarts"]) == ("running", 1), (row, _why(project))
    busy.join(10)
    assert not busy.is_alive()

    assert cache.get("survives") == b"yes"
    cache.close()
    # The replica is back behind nginx (routing restored after nginx's own restart too).
    assert proc.poll_until(lambda: "rtest-app-2" in _instances(api, 30), COME_BACK), _why(project)
    seen = _instances(api, 60)
    assert set(seen) == {"rtest-app-1", "rtest-app-2", "rtest-app-3"}, (seen, _why(project))
    # PostgreSQL came back with its data (the app's pool recovers its connections by itself).
    with httpx.Client(base_url=api, timeout=10, trust_env=False, headers=headers) as client:
        assert proc.poll_until(lambda: client.get(f"/tasks/{task_id}").status_code == 200, 30)

    # A process the supervisor started is its child: the next exit is known exactly.
    old = _pid(project, "app-2")
    os.kill(old, signal.SIGKILL)
    record = _back(project, "app-2", old)
    assert (record.restarts, record.last_exit) == (2, "SIGKILL"), _why(project)
    row = _status(run_cli, project)["app-2"]
    assert (row["restarts"], row["last_exit"]) == (2, "SIGKILL")
    human = run_cli("status", "--project", str(project))
    assert "2 (last: SIGKILL)" in human.stdout
    logs = run_cli("logs", "app-2", "--tail", "200", "--project", str(project))
    assert "[taskscale supervisor" in logs.stdout and "restart 2" in logs.stdout


def _notifications(project: Path, task_ids: list[str]) -> dict[str, int]:
    """Notification rows per task among ``task_ids`` (tasks without one are left out)."""
    with psycopg.connect(_dsn(project)) as conn:
        rows = conn.execute(
            "SELECT task_id::text, count(*) FROM notifications"
            " WHERE task_id::text = ANY(%s) GROUP BY task_id",
            (task_ids,),
        ).fetchall()
    return {task_id: count for task_id, count in rows}


def _missing(project: Path, task_ids: list[str]) -> list[tuple[str, object]]:
    """The tasks with no notification row, each with its outbox rows' publication times."""
    missing = sorted(set(task_ids) - set(_notifications(project, task_ids)), key=int)
    with psycopg.connect(_dsn(project)) as conn:
        return [
            (task_id, conn.execute(
                "SELECT action, published_at FROM outbox WHERE task_id::text = %s", (task_id,)
            ).fetchall())
            for task_id in missing
        ]  # fmt: skip


def test_kafka_events_reach_the_worker_across_a_broker_kill(
    kafka_stack: tuple[Path, str],
) -> None:
    """Tansu keeps its log in memory: the supervisor restarts it empty. The worker, which stays
    up, must still turn every task's event into exactly one notification row: those from before
    the kill (consumed before it), during the outage (they wait in the outbox) and after."""
    project, api = kafka_stack
    headers = api_headers(api)
    created: list[str] = []
    with httpx.Client(base_url=api, timeout=10, trust_env=False, headers=headers) as client:

        def create(title: str) -> None:
            response = client.post("/tasks/", json={"title": title})
            assert response.status_code == 201, response.text
            created.append(str(response.json()["id"]))

        for i in range(5):
            create(f"before kafka kill {i}")
        first = proc.poll_until(lambda: len(_notifications(project, created)) == 5, COME_BACK)
        assert first, _why(project)

        old = _pid(project, "kafka")
        os.kill(old, signal.SIGKILL)
        # The API does not need the broker: accepted, the events wait in the outbox.
        for i in range(5):
            create(f"while kafka is down {i}")
        _back(project, "kafka", old)
        for i in range(5):
            create(f"after kafka restart {i}")

    def all_notified() -> bool:
        return len(_notifications(project, created)) == len(created)

    assert proc.poll_until(all_notified, 60), (_missing(project, created), _why(project))
    counts = _notifications(project, created)
    assert sorted(counts) == sorted(created) and set(counts.values()) == {1}, counts


def test_a_stopped_service_is_not_a_crash(
    run_cli: CliRunner, kafka_stack: tuple[Path, str]
) -> None:
    project, _ = kafka_stack
    worker = _record(project, "worker")
    assert worker is not None
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        # Longer than the supervisor takes to restart a killed service (well under a second).
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert _pid(project, "worker") == worker.pid
            time.sleep(0.2)
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    after = _record(project, "worker")
    assert after is not None and after.pid == worker.pid and after.restarts == worker.restarts
    assert _status(run_cli, project)["worker"]["state"] == "running"


def test_up_again_keeps_the_supervisor_and_every_service(
    run_cli: CliRunner, kafka_stack: tuple[Path, str]
) -> None:
    project, _ = kafka_stack
    before = {r.name: r.pid for r in StateFile(project / ".taskscale").load().services.values()}
    result = run_cli("up", "--replicas", "3", "--project", str(project))
    assert result.exit_code == 0, result.stderr
    after = {r.name: r.pid for r in StateFile(project / ".taskscale").load().services.values()}
    assert after == before


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "p"
    root.mkdir()
    project = create_project(
        NewProjectSpec(name="crashy", output_dir=root, broker="redis", git=False)
    ).path
    ports = set_free_ports(project)
    _set_restart(project, max_restarts=2, window_seconds=60.0, backoff_max_seconds=0.5)
    with stopping_stack(project):
        yield project, f"http://127.0.0.1:{ports['api']}"


def test_a_crash_loop_hits_the_limit_and_status_shows_it(
    run_cli: CliRunner, project: tuple[Path, str]
) -> None:
    root, _ = project
    p = str(root)
    assert run_cli("up", "--replicas", "1", "--project", p).exit_code == 0
    # Break the worker, then kill it: every restart now dies at import.
    worker_py = root / "app" / "worker.py"
    original = worker_py.read_text()
    broken = original.replace(
        "from __future__ import annotations\n",
        "from __future__ import annotations\n\nraise RuntimeError('worker broken on purpose')\n",
        1,
    )
    assert broken != original
    worker_py.write_text(broken)
    os.kill(_pid(root, "worker"), signal.SIGKILL)

    def given_up() -> bool:
        record = _record(root, "worker")
        return record is not None and record.crash_loop

    proc.wait_until(given_up, timeout=COME_BACK, what="the crash loop")
    record = _record(root, "worker")
    assert record is not None
    assert (record.restarts, record.last_exit) == (2, "exit 1")
    # It stays given up: no more restarts (bounded look, longer than the back-off).
    time.sleep(1.5)
    again = _record(root, "worker")
    assert again is not None and (again.pid, again.restarts) == (record.pid, 2)

    row = _status(run_cli, root)["worker"]
    assert (row["state"], row["healthy"], row["restarts"], row["last_exit"]) == (
        "crash-loop",
        False,
        2,
        "exit 1",
    )
    assert "worker broken on purpose" in str(row["log_tail"])
    human = run_cli("status", "--project", p)
    assert "worker is in a crash loop" in human.stderr
    assert "worker broken on purpose" in human.stdout  # the end of its log
    # Fixed, `up` starts it afresh.
    worker_py.write_text(original)
    assert run_cli("up", "--replicas", "1", "--project", p).exit_code == 0
    fresh = _status(run_cli, root)["worker"]
    assert (fresh["state"], fresh["restarts"]) == ("running", 0)


def _up(run_cli: CliRunner, root: Path, replicas: int) -> tuple[int, list[int]]:
    """``up``; the supervisor's pid and its children (the zygote)."""
    result = run_cli("up", "--replicas", str(replicas), "--project", str(root))
    assert result.exit_code == 0, result.stderr
    supervisor = _pid(root, "supervisor")
    # Its zygote starts as soon as the supervisor has imported taskscale.
    assert proc.poll_until(lambda: bool(psutil.Process(supervisor).children()), 15)
    return supervisor, [c.pid for c in psutil.Process(supervisor).children()]


def test_a_killed_supervisor_leaves_the_stack_running_and_up_replaces_it(
    run_cli: CliRunner, project: tuple[Path, str]
) -> None:
    root, api = project
    p = str(root)
    supervisor, zygotes = _up(run_cli, root, 2)
    os.kill(supervisor, signal.SIGKILL)
    assert proc.wait_for_exit(supervisor, 5)
    # Its zygote follows it (its stdin closed); the services run on.
    assert all(proc.wait_for_exit(pid, 10) for pid in zygotes)
    assert set(_instances(api, 30)) == {"crashy-app-1", "crashy-app-2"}
    rows = _status(run_cli, root)
    assert rows["supervisor"]["state"] == "dead"
    human = run_cli("status", "--project", p)
    assert "supervisor process is not running" in human.stderr
    # Nothing restarts a crash now...
    old = _pid(root, "app-1")
    os.kill(old, signal.SIGKILL)
    assert proc.wait_for_exit(old, 5)
    assert _status(run_cli, root)["app-1"]["state"] == "dead"
    # ...until `up` replaces the supervisor (and heals app-1 itself).
    assert run_cli("up", "--replicas", "2", "--project", p).exit_code == 0
    new_supervisor = _pid(root, "supervisor")
    assert new_supervisor != supervisor
    old = _pid(root, "app-2")
    os.kill(old, signal.SIGKILL)
    _back(root, "app-2", old)


def test_down_stops_the_supervisor_first_and_leaves_nothing(
    run_cli: CliRunner, project: tuple[Path, str]
) -> None:
    root, _ = project
    p = str(root)
    _, zygotes = _up(run_cli, root, 2)
    pids = recorded_pids(root)
    result = run_cli("down", "--project", p)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.index("supervisor") < result.stderr.index("nginx")
    assert all(not proc.pid_alive(pid) for pid in [*pids, *zygotes])
    leftovers = [
        process.pid
        for process in psutil.process_iter(["cmdline"])
        if any(str(root) in arg for arg in process.info["cmdline"] or [])
    ]
    assert leftovers == []
    assert not (root / ".taskscale" / "state.json").exists()
    assert not list((root / ".taskscale" / "specs").glob("*.json"))
    ports = load_project(root).config.ports
    for port in (ports.api, ports.app_base, ports.postgres, ports.redis):
        assert port_free(port), port
