"""`taskscale replicate` on the local target, against real PostgreSQL nodes.

Setup (sync) -> pg_stat_replication shows every standby streaming -> a task written through the
API is readable on each standby -> standbys refuse writes -> bad input is refused with nothing
changed -> switchover and back with all data present -> failover after killing the primary with
writes in flight: every write the API acknowledged is on the new primary and the app serves
again -> rejoin of the old primary.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from taskscale import proc
from taskscale.config import load_project, read_env_file
from taskscale.targets.local import LocalTarget
from taskscale.targets.local.state import StateFile
from taskscale.targets.local.topology import Topology
from tests.client_loop import api_client, api_headers, looping_clients
from tests.conftest import CliRunner

pytestmark = pytest.mark.slow


def _json(run_cli: CliRunner, *args: str) -> dict[str, Any]:
    result = run_cli(*args)
    assert result.exit_code == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _nodes(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in data["nodes"]}


def _connect(project: Path, port: int) -> psycopg.Connection[Any]:
    env = read_env_file(project / ".env")
    return psycopg.connect(
        host="127.0.0.1",
        port=port,
        user=env["POSTGRES_USER"],
        password=env["POSTGRES_PASSWORD"],
        dbname=env["POSTGRES_DB"],
        autocommit=True,
        connect_timeout=3,
    )


def _visible(project: Path, port: int, task_id: int) -> bool:
    try:
        with _connect(project, port) as conn:
            row = conn.execute("SELECT 1 FROM tasks WHERE id = %s", (task_id,)).fetchone()
            return row is not None
    except psycopg.Error:
        return False


def _post(client: httpx.Client, title: str) -> httpx.Response:
    return client.post("/tasks/", json={"title": title, "description": "replication test"})


def test_replication_lifecycle(
    stack_project: tuple[Path, dict[str, int]], run_cli: CliRunner
) -> None:
    project, ports = stack_project
    p = ("--project", str(project))
    assert run_cli("up", "--replicas", "2", *p).exit_code == 0
    api = f"http://127.0.0.1:{ports['api']}"

    # Bad input first: nothing may change.
    bad = run_cli("replicate", "--replicas", "99", *p)
    assert bad.exit_code == 2 and "between 0 and" in bad.stderr

    headers = api_headers(api)
    with looping_clients(api, "/tasks/", params={"limit": 5}, clients=2, headers=headers) as loop:
        data = _json(run_cli, "replicate", "--replicas", "2", "--sync", "--json", *p)
    assert loop.errors == [], loop.errors[:5]
    # The rollout moved the replicas to the other slot; their names stay app-1..N.
    services = _json(run_cli, "status", "--json", *p)["services"]
    apps = [(s["name"], s["slot"]) for s in services if s["kind"] == "app"]
    assert apps == [("app-1", "green"), ("app-2", "green")], apps
    assert "green" in run_cli("status", *p).stdout
    nodes = _nodes(data)
    assert [n for n in nodes.values() if n["role"] == "primary"] == [nodes["postgres"]]
    standbys = [n for n in nodes.values() if n["role"] == "standby"]
    assert len(standbys) == 2
    assert all(n["state"] == "streaming" for n in standbys), standbys
    assert all(n["sync_state"] in {"quorum", "sync"} for n in standbys), standbys
    # Idempotent: the same command changes nothing.
    again = _json(run_cli, "replicate", "--replicas", "2", "--sync", "--json", *p)
    assert again["changed"] == []

    with api_client(api) as client:
        created = _post(client, "replicated")
        assert created.status_code == 201
        task_id = int(created.json()["id"])
        for standby in standbys:
            port = int(standby["port"])
            assert proc.poll_until(functools.partial(_visible, project, port, task_id), 5.0)
            with (
                _connect(project, port) as conn,
                pytest.raises(psycopg.errors.ReadOnlySqlTransaction),
            ):
                conn.execute(
                    "INSERT INTO tasks (title, description, status) VALUES ('x', 'y', 'pending')"
                )
        # Reads through the API are served (from standbys) and see the task.
        assert client.get(f"/tasks/{task_id}").status_code == 200
        # Read-your-writes: a read that insists on the primary sees a write at once, whatever
        # the standbys' lag; so does a read of the task itself (the write filled the cache).
        primary = {"X-Read-Consistency": "primary"}
        for i in range(20):
            new_id = int(_post(client, f"ryw-{i}").json()["id"])
            listed = client.get(f"/tasks/?after={new_id - 1}&limit=1", headers=primary)
            assert [t["id"] for t in listed.json()] == [new_id]
            assert client.get(f"/tasks/{new_id}").status_code == 200

    # A killed standby is started again by the stack's supervisor: same data directory, still
    # a standby, streaming again, the data there.
    state_file = StateFile(load_project(project).state_dir)
    killed = state_file.load().named("postgres-2")
    assert killed is not None
    os.kill(killed.pid, signal.SIGKILL)

    def standby_streams_again() -> bool:
        record = state_file.load().named("postgres-2")
        if record is None or record.pid == killed.pid or not record.alive():
            return False
        node = _nodes(_json(run_cli, "replicate", "status", "--json", *p))["postgres-2"]
        return bool(node["role"] == "standby" and node["state"] == "streaming")

    assert proc.poll_until(standby_streams_again, 30)
    restarted = state_file.load().named("postgres-2")
    assert restarted is not None and restarted.restarts == 1
    assert _visible(project, int(_nodes(data)["postgres-2"]["port"]), task_id)

    unknown = run_cli("replicate", "switchover", "--to", "nope", *p)
    assert unknown.exit_code == 2 and "unknown node" in unknown.stderr
    healthy = run_cli("replicate", "failover", *p)
    assert healthy.exit_code != 0 and "healthy" in healthy.stderr

    # A standby whose replay is paused falls behind: switchover to it is refused.
    cluster = LocalTarget(load_project(project)).replication()
    with cluster.node("postgres-3").connect() as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
    with api_client(api) as client:
        for i in range(20):
            assert _post(client, f"lag-{i}").status_code == 201

    def lagging() -> bool:
        nodes_now = _nodes(_json(run_cli, "replicate", "status", "--json", *p))
        return int(nodes_now["postgres-3"]["lag_bytes"] or 0) > 0

    assert proc.poll_until(lagging, 10)
    refused = run_cli("replicate", "switchover", "--to", "postgres-3", "--max-lag", "1", *p)
    assert refused.exit_code != 0 and "behind" in refused.stderr, refused.stderr
    assert _nodes(_json(run_cli, "replicate", "status", "--json", *p))["postgres"]["role"] == (
        "primary"
    )
    with cluster.node("postgres-3").connect() as conn:
        conn.execute("SELECT pg_wal_replay_resume()")
    status = _json(run_cli, "replicate", "status", "--json", *p)
    assert {n["name"] for n in status["nodes"]} == set(nodes)

    # Switchover and back, data intact.
    first = _json(run_cli, "replicate", "switchover", "--to", "postgres-2", "--json", *p)
    assert _nodes(first)["postgres-2"]["role"] == "primary"
    assert _nodes(first)["postgres"]["role"] == "standby"
    with api_client(api) as client:
        assert proc.poll_until(lambda: _post(client, "after switchover").status_code == 201, 10)
        assert client.get(f"/tasks/{task_id}").status_code == 200
    back = _json(run_cli, "replicate", "switchover", "--to", "postgres", "--json", *p)
    assert _nodes(back)["postgres"]["role"] == "primary"
    assert all(n["state"] == "streaming" for n in _nodes(back).values() if n["role"] == "standby")

    # Failover with writes in flight.
    acknowledged: list[int] = []
    failures = [0]
    stop = threading.Event()

    def writer() -> None:
        with api_client(api, timeout=5) as client:
            deadline = time.monotonic() + 30
            n = 0
            while not stop.is_set() and time.monotonic() < deadline and n < 3000:
                n += 1
                try:
                    response = _post(client, f"inflight-{n}")
                except httpx.HTTPError:
                    failures[0] += 1
                    continue
                if response.status_code == 201:
                    acknowledged.append(int(response.json()["id"]))
                else:
                    failures[0] += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    assert proc.poll_until(lambda: len(acknowledged) >= 20, 15)
    # The stack's supervisor would start a killed primary again within a second (same data,
    # same role: test_local_restarts.py); failover is for a primary that does not come back,
    # so stop the supervisor first.
    supervisor = StateFile(load_project(project).state_dir).load().named("supervisor")
    assert supervisor is not None
    assert proc.terminate(supervisor.pid, timeout=10)
    primary_pid = _primary_pid(project)
    os.kill(primary_pid, signal.SIGKILL)
    # Keep writing until the clients see the outage (writes in flight at the kill), bounded.
    assert proc.poll_until(lambda: failures[0] > 0, 10)
    stop.set()
    thread.join(timeout=15)

    result = _json(run_cli, "replicate", "failover", "--json", *p)
    new_primary = result["primary"]
    assert new_primary != "postgres"
    port = _nodes(result)[new_primary]["port"]
    with _connect(project, port) as conn:
        rows = conn.execute("SELECT id FROM tasks WHERE id = ANY(%s)", (acknowledged,)).fetchall()
    assert {r[0] for r in rows} == set(acknowledged), "an acknowledged write was lost"
    with api_client(api) as client:
        assert proc.poll_until(lambda: _post(client, "after failover").status_code == 201, 10)

    rejoined = _json(run_cli, "replicate", "rejoin", "postgres", "--json", *p)
    assert _nodes(rejoined)["postgres"]["role"] == "standby"
    assert _nodes(rejoined)["postgres"]["state"] == "streaming"

    # Removing the standbys is idempotent too.
    removed = _json(run_cli, "replicate", "--replicas", "0", "--json", *p)
    assert [n["role"] for n in removed["nodes"]] == ["primary"]


def _primary_pid(project: Path) -> int:
    state_dir = load_project(project).state_dir
    record = StateFile(state_dir).load().services.get(Topology.load(state_dir).primary)
    assert record is not None, "no primary in the state file"
    return record.pid
