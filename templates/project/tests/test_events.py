"""Events are never stranded: one relay leads, a poison event is dead-lettered, a dead
consumer's entries are claimed, trimming keeps what is not consumed, and a worker killed
mid-stream loses and duplicates nothing. The worker's probes and metrics are served."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest

from app.core.config import Settings, libpq_url
from app.core.db import Database
from app.core.events import Event, RedisStreamsBroker
from app.outbox import OutboxRelay
from app.worker import NotificationHandler, run
from tests.conftest import PROJECT_ROOT, AppFactory, client_for, eventually
from tests.services import free_port

pytestmark = pytest.mark.anyio


def scalar(database_url: str, sql: str) -> Any:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


@asynccontextmanager
async def database(database_url: str) -> AsyncIterator[Database]:
    db = Database(Settings(database_url=database_url, db_pool_size=2))
    await db.open()
    try:
        yield db
    finally:
        await db.close()


def event(task_id: int, n: int) -> Event:
    body = {"eventId": f"00000000-0000-0000-0000-{n:012d}", "taskId": task_id, "action": "updated", "n": n}
    return Event(key=str(task_id), payload=orjson.dumps(body))


async def consume_until(broker: RedisStreamsBroker, handler: Any, done: Any, timeout: float = 10) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(broker.consume(handler, stop))
    try:
        await eventually(done, timeout=timeout, what="events consumed")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_one_relay_leads_and_another_takes_over(make_app: AppFactory, database_url: str, redis_url: str) -> None:
    app = await make_app()
    async with database(database_url) as db, client_for(app) as client:
        brokers = [RedisStreamsBroker(redis_url, "leader-test", "g", f"relay-{i}") for i in range(2)]
        relays = [OutboxRelay(db.primary, b, poll_interval=0.05, lock_retry=0.1) for b in brokers]
        stops = [asyncio.Event(), asyncio.Event()]
        tasks = [asyncio.create_task(r.run(s)) for r, s in zip(relays, stops, strict=True)]
        try:
            await eventually(lambda: any(r.leader for r in relays), what="a leader")
            await asyncio.sleep(0.3)
            assert sum(r.leader for r in relays) == 1
            task = (await client.post("/tasks/", json={"title": "ordered"})).json()
            for i in range(5):
                await client.patch(f"/tasks/{task['id']}", json={"title": f"v{i}"})
            await eventually(lambda: sum(r.published for r in relays) == 6, what="6 events published")
            leader = next(i for i, r in enumerate(relays) if r.leader)
            assert relays[1 - leader].published == 0  # the other one never published
            # The leader's database session ends: the other relay takes the lock.
            with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'")
            await eventually(lambda: relays[1 - leader].leader, timeout=5, what="the other relay leads")
            await client.patch(f"/tasks/{task['id']}", json={"title": "after the takeover"})
            await eventually(lambda: relays[1 - leader].published == 1, what="published by the new leader")
            entries: Any = await brokers[0].redis.xrange("leader-test")
            titles = [orjson.loads(fields[b"payload"])["task"]["title"] for _id, fields in entries]
            assert titles == ["ordered", "v0", "v1", "v2", "v3", "v4", "after the takeover"]  # one task, in order
        finally:
            for stop in stops:
                stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
            for broker in brokers:
                await broker.close()


async def test_a_poison_event_is_dead_lettered_and_the_others_go_on(database_url: str, redis_url: str) -> None:
    async with database(database_url) as db:
        handler = NotificationHandler(db.primary, "worker-1")
        broker = RedisStreamsBroker(redis_url, "poison-test", "g", "c1", max_deliveries=3)
        try:
            await broker.publish([event(1, 1), Event(key="1", payload=b"not json"), event(1, 2), event(2, 3)])
            await consume_until(broker, handler, lambda: handler.handled == 3 and broker.stats.dead_lettered == 1)
            dead: Any = await broker.redis.xrange("poison-test.dead")
            assert len(dead) == 1
            fields = dead[0][1]
            assert fields[b"payload"] == b"not json"
            assert b"JSONDecodeError" in fields[b"error"]
            assert broker.stats.failed == 3  # three failures, then the dead letter
            assert scalar(database_url, "SELECT count(*) FROM notifications") == 3
            assert (await broker.redis.xpending("poison-test", "g"))["pending"] == 0
        finally:
            await broker.close()


async def test_entries_pending_on_a_dead_consumer_are_claimed(database_url: str, redis_url: str) -> None:
    async with database(database_url) as db:
        handler = NotificationHandler(db.primary, "worker-2")
        broker = RedisStreamsBroker(redis_url, "claim-test", "g", "alive", claim_idle_seconds=0.2)
        try:
            await broker.publish([event(5, n) for n in range(4)])
            await broker.redis.xgroup_create("claim-test", "g", id="0")
            # A consumer reads everything and dies before acknowledging.
            await broker.redis.xreadgroup("g", "dead", {"claim-test": ">"}, count=10)
            assert (await broker.redis.xpending("claim-test", "g"))["pending"] == 4
            await consume_until(broker, handler, lambda: handler.handled == 4)
            assert (await broker.redis.xpending("claim-test", "g"))["pending"] == 0
        finally:
            await broker.close()


async def test_trimming_never_drops_an_unconsumed_event(database_url: str, redis_url: str) -> None:
    async with database(database_url) as db:
        handler = NotificationHandler(db.primary, "worker-3")
        broker = RedisStreamsBroker(redis_url, "trim-test", "g", "c1")
        try:
            await broker.redis.xgroup_create("trim-test", "g", id="0", mkstream=True)
            await broker.publish([event(7, n) for n in range(6)])
            await broker.redis.xreadgroup("g", "c1", {"trim-test": ">"}, count=2)  # 2 pending
            await broker.trim()
            assert await broker.redis.xlen("trim-test") == 6  # nothing acknowledged yet
            await consume_until(broker, handler, lambda: handler.handled == 6)
            await broker.publish([event(7, 6)])  # not consumed
            removed = await broker.trim()
            assert removed == 6
            remaining: Any = await broker.redis.xrange("trim-test")
            assert [orjson.loads(f[b"payload"])["n"] for _id, f in remaining] == [6]
            await broker.refresh_lag()
            assert broker.stats.lag == 1 and broker.stats.pending == 0
        finally:
            await broker.close()


async def test_worker_serves_probes_and_metrics(make_app: AppFactory, database_url: str, redis_url: str) -> None:
    port = free_port()
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        broker="redis",
        instance_id="worker-http",
        db_pool_size=2,
        worker_port=port,
        worker_host="127.0.0.1",
        outbox_poll_interval_seconds=0.05,
    )
    stop = asyncio.Event()
    worker = asyncio.create_task(run(settings, stop))
    app = await make_app()
    try:
        async with client_for(app) as client, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as probe:
            for i in range(3):
                await client.post("/tasks/", json={"title": f"w{i}"})

            async def processed() -> bool:
                text = (await probe.get("/metrics")).text
                return "events_processed_total 3.0" in text

            await eventually(processed, timeout=10, what="3 events processed")
            assert (await probe.get("/healthz")).json() == {"status": "ok", "stuck": []}
            ready = await probe.get("/readyz")
            assert ready.status_code == 200 and ready.json()["status"] == "ok"
            assert ready.json()["relay_leader"] is True
            text = (await probe.get("/metrics")).text
            for name in (
                "events_failed_total 0.0",
                "events_dead_lettered_total 0.0",
                "outbox_backlog 0.0",
                "outbox_oldest_unpublished_age_seconds 0.0",
                "outbox_relay_leader 1.0",
                "events_consumer_lag 0.0",
                "events_pending 0.0",
                "outbox_published_total 3.0",
            ):
                assert name in text, name
            assert (await probe.get("/nope")).status_code == 404
    finally:
        stop.set()
        await asyncio.wait_for(worker, 15)


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "app.worker"], cwd=PROJECT_ROOT, env=env, stdout=out, stderr=out)


async def test_a_worker_killed_mid_stream_loses_and_duplicates_nothing(
    make_app: AppFactory, database_url: str, redis_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "BROKER": "redis",
        "INSTANCE_ID": "worker",  # the same consumer name after the restart, as compose has
        "WORKER_PORT": "0",
        "OUTBOX_BATCH_SIZE": "10",
        "LOG_LEVEL": "WARNING",
    }
    app = await make_app()
    async with client_for(app) as client:
        for i in range(150):
            assert (await client.post("/tasks/", json={"title": f"k{i}"})).status_code == 201
        worker = _worker(env, tmp_path / "worker.log")
        try:
            await eventually(
                lambda: scalar(database_url, "SELECT count(*) FROM notifications") >= 20, timeout=20, what="started"
            )
            worker.send_signal(signal.SIGKILL)  # mid-stream: batches read and not acknowledged
            worker.wait(timeout=10)
            assert scalar(database_url, "SELECT count(*) FROM notifications") < 150
            worker = _worker(env, tmp_path / "worker.log")
            await eventually(
                lambda: scalar(database_url, "SELECT count(*) FROM notifications") == 150, timeout=30, what="all 150"
            )
            missing = scalar(
                database_url, "SELECT count(*) FROM outbox o LEFT JOIN notifications n USING (event_id) WHERE n IS NULL"
            )
            assert missing == 0
        finally:
            worker.terminate()
            worker.wait(timeout=15)
