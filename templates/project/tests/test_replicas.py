"""Reads over a real streaming standby: only while it answers and keeps up; a standby killed
under load costs no failed request; with the primary killed, writes fail fast (503 and
Retry-After) and follow the standby once it is promoted, without restarting the app."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from app.core.db import Database
from tests.conftest import AppFactory, client_for, eventually
from tests.services import PostgresServer, start_standby

pytestmark = pytest.mark.anyio


@pytest.fixture
def standby(private_postgres: PostgresServer, tmp_path: Path) -> Iterator[PostgresServer]:
    server = start_standby(private_postgres, tmp_path)
    try:
        yield server
    finally:
        server.stop()


def db_of(app: FastAPI) -> Database:
    db: Database = app.state.services.db
    return db


async def replica_app(
    make_app: AppFactory, primary: PostgresServer, standby: PostgresServer, **settings: object
) -> FastAPI:
    # No cache: every read below reaches the database.
    app = await make_app(
        database_url=primary.url,
        database_replica_urls=standby.url,
        cache_enabled=False,
        db_health_interval_seconds=0.1,
        **settings,
    )
    db = db_of(app)
    await eventually(lambda: db.usable(db.nodes[1]), what="standby usable")
    return app


async def replayed(client: httpx.AsyncClient, task_id: int) -> bool:
    return (await client.get(f"/tasks/{task_id}")).status_code == 200


async def test_reads_go_to_a_standby_while_it_keeps_up(
    make_app: AppFactory, private_postgres: PostgresServer, standby: PostgresServer
) -> None:
    app = await replica_app(make_app, private_postgres, standby, replica_max_lag_seconds=0.5)
    db = db_of(app)
    node = db.nodes[1]
    async with client_for(app) as client:
        first = (await client.post("/tasks/", json={"title": "replicated"})).json()
        await eventually(lambda: replayed(client, first["id"]), what="standby replayed the write")
        before = node.reads
        for _ in range(5):
            assert (await client.get("/tasks/")).status_code == 200
        assert node.reads >= before + 5
        health = (await client.get("/readyz")).json()
        assert health["checks"]["replicas"] == "ok"
        assert health["database"]["standbys"][0]["state"] == "ok"

        # Replay paused: the standby falls behind the primary, reads go to the primary and see
        # every acknowledged write.
        with psycopg.connect(**standby.admin(), autocommit=True) as admin:
            admin.execute("SELECT pg_wal_replay_pause()")
            second = (await client.post("/tasks/", json={"title": "not on the standby yet"})).json()
            await eventually(lambda: not db.usable(node), what="standby left out for its lag")
            assert node.lag_seconds is not None and node.lag_seconds > 0.5
            assert (await client.get(f"/tasks/{second['id']}")).json() == second
            health = (await client.get("/readyz")).json()
            assert (await client.get("/readyz")).status_code == 200
            assert health["status"] == "degraded" and health["degraded"] == ["replicas"]
            assert health["database"]["standbys"][0]["state"] == "lagging"
            metrics = (await client.get("/metrics")).text
            assert 'db_replica_lag_seconds{node="replica-0"}' in metrics
            admin.execute("SELECT pg_wal_replay_resume()")
        await eventually(lambda: db.usable(node), what="standby back once it caught up")


async def test_a_standby_killed_under_load_costs_no_failed_request(
    make_app: AppFactory, private_postgres: PostgresServer, standby: PostgresServer
) -> None:
    app = await replica_app(make_app, private_postgres, standby)
    async with client_for(app) as client:
        ids = [(await client.post("/tasks/", json={"title": f"t{i}"})).json()["id"] for i in range(10)]
        await eventually(lambda: replayed(client, ids[-1]), what="standby replayed the writes")
        statuses: list[int] = []

        async def reader() -> None:
            deadline = time.monotonic() + 2.0
            i = 0
            while time.monotonic() < deadline:
                url = f"/tasks/{ids[i % len(ids)]}" if i % 2 else "/tasks/?limit=5"
                statuses.append((await client.get(url)).status_code)
                i += 1

        readers = [asyncio.create_task(reader()) for _ in range(8)]
        await asyncio.sleep(0.5)
        standby.kill()
        await asyncio.gather(*readers)
        assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
        health = await client.get("/readyz")
        assert health.status_code == 200  # degraded: reads go to the primary
        assert health.json()["checks"]["replicas"] == "0 of 1 usable"


async def test_primary_down_fails_fast_and_writes_follow_a_promoted_standby(
    make_app: AppFactory, private_postgres: PostgresServer, standby: PostgresServer
) -> None:
    app = await replica_app(make_app, private_postgres, standby)
    db = db_of(app)
    async with client_for(app) as client:
        task = (await client.post("/tasks/", json={"title": "before the crash"})).json()
        await eventually(lambda: replayed(client, task["id"]), what="standby replayed the write")
        private_postgres.kill()
        for _ in range(5):
            started = time.monotonic()
            response = await client.post("/tasks/", json={"title": "while the primary is down"})
            assert time.monotonic() - started < 1.0
            assert response.status_code == 503
            assert response.json() == {"detail": "Database unavailable"}
            assert response.headers["retry-after"] == "1"
        # Reads keep coming from the standby.
        assert (await client.get(f"/tasks/{task['id']}")).json() == task
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "unavailable"

        standby.promote()
        await eventually(lambda: db.primary_up, timeout=10, what="writes follow the promoted standby")
        created = await client.post("/tasks/", json={"title": "after the promotion"})
        assert created.status_code == 201
        assert db.writer is db.nodes[1]
        assert (await client.get("/readyz")).status_code == 200
