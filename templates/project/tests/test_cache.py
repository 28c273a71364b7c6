"""Two-level cache: hits, invalidation on every write (also across instances), degradation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from app.api.deps import Services
from app.core.cache import CacheKey, ResourceCache
from app.core.config import libpq_url
from app.crud.tasks import get_tasks_json
from tests.conftest import AppFactory, client_for, eventually, owner_id
from tests.services import RedisServer, free_port

pytestmark = pytest.mark.anyio


def services_of(app: FastAPI) -> Services:
    services: Services = app.state.services
    return services


async def wait_local_ready(app: FastAPI) -> None:
    await eventually(lambda: services_of(app).cache.local_active, what="invalidation subscription confirmed")


def task_cache(app: FastAPI) -> ResourceCache:
    return services_of(app).cache.resource("tasks")


async def task_key(client: httpx.AsyncClient, task_id: int) -> CacheKey:
    return ("tasks", await owner_id(client), task_id)


def counts(app: FastAPI) -> tuple[float, float, float]:
    c = task_cache(app).counters
    return c.hit_local._value.get(), c.hit_redis._value.get(), c.miss._value.get()


async def test_read_through_layers(app: FastAPI, client: httpx.AsyncClient) -> None:
    await wait_local_ready(app)
    task = (await client.post("/tasks/", json={"title": "cached"})).json()
    cache = services_of(app).cache
    name = cache.redis_name(await task_key(client, task["id"]))
    assert await cache.redis.get(name) is not None  # write-through on create
    base = counts(app)
    assert (await client.get(f"/tasks/{task['id']}")).json() == task  # Redis hit, fills memory
    assert (await client.get(f"/tasks/{task['id']}")).json() == task  # memory hit
    local, redis_hits, _ = counts(app)
    assert (local - base[0], redis_hits - base[1]) == (1, 1)
    # Memory hits do not even touch Redis: change Redis behind the cache's back.
    await cache.redis.set(name, b'{"id":0}')
    assert (await client.get(f"/tasks/{task['id']}")).json() == task


async def test_miss_goes_to_database_and_fills_redis(
    app: FastAPI, client: httpx.AsyncClient, database_url: str
) -> None:
    owner = await owner_id(client)
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO tasks (owner_id, title) VALUES (%s, 'direct') RETURNING id", (owner,)
        ).fetchone()
    assert row is not None
    _, _, misses = counts(app)
    assert (await client.get(f"/tasks/{row[0]}")).json()["title"] == "direct"
    assert counts(app)[2] == misses + 1
    cache = services_of(app).cache
    assert await cache.redis.get(cache.redis_name(("tasks", owner, row[0]))) is not None


async def test_every_write_invalidates(app: FastAPI, client: httpx.AsyncClient) -> None:
    await wait_local_ready(app)
    task = (await client.post("/tasks/", json={"title": "v1"})).json()
    url = f"/tasks/{task['id']}"
    for _ in range(2):
        await client.get(url)
    await client.patch(url, json={"title": "v2"})
    assert (await client.get(url)).json()["title"] == "v2"
    await client.patch(url, json={"status": "done"})
    assert (await client.get(url)).json()["status"] == "done"
    await client.delete(url)
    assert (await client.get(url)).status_code == 404
    assert (await client.get(url)).status_code == 404


async def test_invalidation_reaches_other_instances(make_app: AppFactory) -> None:
    app_a = await make_app(instance_id="a")
    app_b = await make_app(instance_id="b")
    await wait_local_ready(app_a)
    await wait_local_ready(app_b)
    async with client_for(app_a) as a, client_for(app_b) as b:
        task = (await a.post("/tasks/", json={"title": "shared"})).json()
        url = f"/tasks/{task['id']}"
        for _ in range(2):
            assert (await b.get(url)).json()["title"] == "shared"
        key = await task_key(a, task["id"])
        assert key in services_of(app_b).cache.local
        response = await a.patch(url, json={"title": "changed by a"})
        assert response.headers["x-instance-id"] == "a"
        # b drops its memory entry when Redis delivers the invalidation (asynchronous, ~ms).
        await eventually(lambda: key not in services_of(app_b).cache.local, what="b's entry invalidated")
        response = await b.get(url)
        assert response.headers["x-instance-id"] == "b"
        assert response.json()["title"] == "changed by a"
        await a.delete(url)

        async def gone_at_b() -> bool:
            return (await b.get(url)).status_code == 404

        await eventually(gone_at_b, what="delete seen by b")
        assert (await b.get(url)).status_code == 404


async def test_single_flight_collapses_concurrent_misses(app: FastAPI, client: httpx.AsyncClient) -> None:
    task = (await client.post("/tasks/", json={"title": "herd"})).json()
    cache = services_of(app).cache
    await cache.redis.delete(cache.redis_name(await task_key(client, task["id"])))
    cache.local.clear()
    _, _, misses = counts(app)
    responses = await asyncio.gather(*(client.get(f"/tasks/{task['id']}") for _ in range(20)))
    assert {r.status_code for r in responses} == {200}
    assert counts(app)[2] - misses == 1


async def test_cache_disabled_setting(make_app: AppFactory) -> None:
    app = await make_app(cache_enabled=False)
    async with client_for(app) as client:
        task = (await client.post("/tasks/", json={"title": "nocache"})).json()
        assert (await client.get(f"/tasks/{task['id']}")).json() == task
        cache = services_of(app).cache
        assert await cache.redis.get(cache.redis_name(await task_key(client, task["id"]))) is None


async def test_redis_down_degrades_to_database(make_app: AppFactory, tmp_path: Path) -> None:
    server = RedisServer(workdir=tmp_path, port=free_port())
    server.start()
    try:
        app = await make_app(redis_url=server.url)
        await wait_local_ready(app)
        async with client_for(app) as client:
            task = (await client.post("/tasks/", json={"title": "before outage"})).json()
            await client.get(f"/tasks/{task['id']}")
            server.stop()
            # Memory layer is dropped with the subscription; reads go to the database.
            await eventually(lambda: not services_of(app).cache.local_active, what="subscription dropped")
            assert not services_of(app).cache.local
            url = f"/tasks/{task['id']}"
            assert (await client.get(url)).json() == task
            created = await client.post("/tasks/", json={"title": "during outage"})
            assert created.status_code == 201
            patched = await client.patch(url, json={"title": "patched during outage"})
            assert patched.status_code == 200
            assert (await client.get(url)).json()["title"] == "patched during outage"
            assert (await client.get("/tasks/")).status_code == 200
            # Degraded, not unready: the replica stays in the load balancer.
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            body = ready.json()
            assert body["status"] == "degraded"
            assert set(body["degraded"]) == {"cache", "broker"}  # this Redis is the broker too
            assert body["checks"]["cache"] == "down"
            assert body["checks"]["database"] == "ok"
            metrics = (await client.get("/metrics")).text
            assert 'dependency_up{dependency="cache"} 0.0' in metrics
            assert "app_degraded 1.0" in metrics
            assert "cache_bypassed_total " in metrics and "cache_bypassed_total 0.0" not in metrics

            server.start()
            await eventually(lambda: services_of(app).cache.local_active, timeout=6, what="subscription back")
            # The background probe trusts Redis again (every 0.5 s), after checking the generation.
            await eventually(lambda: services_of(app).cache.trusted, what="cache trusted again")
            assert (await client.get(url)).json()["title"] == "patched during outage"
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["status"] == "ok"
            assert "app_degraded 0.0" in (await client.get("/metrics")).text
    finally:
        server.stop()


async def test_concurrent_database_reads_are_batched(make_app: AppFactory) -> None:
    app = await make_app(cache_enabled=False)
    async with client_for(app) as client:
        ids = [(await client.post("/tasks/", json={"title": f"b{i}"})).json()["id"] for i in range(12)]
        loader = services_of(app).db.loader(get_tasks_json)
        batches = loader.batches
        responses = await asyncio.gather(*(client.get(f"/tasks/{i}") for i in [*ids, ids[0], 999_999]))
        assert [r.json()["id"] for r in responses[:-1]] == [*ids, ids[0]]
        assert responses[-1].status_code == 404
        assert loader.batches - batches < 13  # fewer queries than requests


async def test_fill_racing_a_write_is_not_kept_in_memory(app: FastAPI, client: httpx.AsyncClient) -> None:
    await wait_local_ready(app)
    cache = services_of(app).cache
    task = (await client.post("/tasks/", json={"title": "old"})).json()
    key = await task_key(client, task["id"])
    await cache.redis.delete(cache.redis_name(key))
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_stale_load() -> bytes | None:
        started.set()
        await release.wait()
        return b'{"title": "stale"}'

    fill = asyncio.create_task(cache.get(key, slow_stale_load, task_cache(app).counters))
    await started.wait()
    await client.patch(f"/tasks/{task['id']}", json={"title": "new"})  # commits while the fill loads
    release.set()
    await fill
    assert key not in cache.local  # the stale fill was not kept in memory
    assert (await client.get(f"/tasks/{task['id']}")).json()["title"] == "new"  # Redis: SET beat SET NX


@pytest.mark.parametrize("outage", ["killed and restarted from its AOF", "hung (SIGSTOP) then resumed"])
async def test_a_write_during_a_redis_outage_is_seen_by_every_replica_after_it(
    make_app: AppFactory, tmp_path: Path, outage: str
) -> None:
    """Three replicas cache a task in memory and in Redis; Redis goes away; one replica updates
    the task; Redis comes back (still holding the old value); every replica serves the update."""
    server = RedisServer(workdir=tmp_path, port=free_port(), append_only=True)
    server.start()
    try:
        apps = [await make_app(redis_url=server.url, instance_id=f"replica-{i}") for i in range(3)]
        for app in apps:
            await wait_local_ready(app)
        async with client_for(apps[0]) as writer, client_for(apps[1]) as c1, client_for(apps[2]) as c2:
            clients = [writer, c1, c2]
            task = (await writer.post("/tasks/", json={"title": "v1"})).json()
            url = f"/tasks/{task['id']}"
            key = await task_key(writer, task["id"])
            for client in clients:
                for _ in range(2):
                    assert (await client.get(url)).json()["title"] == "v1"
            assert all(key in services_of(app).cache.local for app in apps)  # in every memory layer
            stale_name = services_of(apps[0]).cache.redis_name(key)

            if outage.startswith("killed"):
                server.kill()
            else:
                server.pause()
            # Every replica notices (its heartbeat), even those whose reads all hit memory.
            await eventually(lambda: not any(services_of(a).cache.trusted for a in apps), what="outage noticed")
            patched = await writer.patch(url, json={"title": "v2 written during the outage"})
            assert patched.status_code == 200
            for client in clients:  # during the outage: the database answers
                assert (await client.get(url)).json()["title"] == "v2 written during the outage"

            if outage.startswith("killed"):
                server.start()  # the append-only file brings the old value back
            else:
                server.resume()
            await eventually(
                lambda: all(services_of(a).cache.trusted and services_of(a).cache.local_active for a in apps),
                timeout=10,
                what="every replica trusts Redis again",
            )
            assert await services_of(apps[0]).cache.redis.get(stale_name) is not None  # the old value is still there
            for client in clients:
                for _ in range(3):  # Redis, then memory
                    response = await client.get(url)
                    assert response.json()["title"] == "v2 written during the outage", response.headers["x-instance-id"]
            # Each replica that saw Redis restart took a generation; they settle on the last one.
            await eventually(
                lambda: len({services_of(a).cache.generation for a in apps}) == 1, what="one generation everywhere"
            )
    finally:
        if server.process is not None:
            server.resume()
        server.stop()
