"""Transactional outbox -> Redis Streams -> notifications consumer, including a broker outage."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis.exceptions

from app.core.config import Settings, libpq_url
from app.core.db import Database
from app.core.events import RedisStreamsBroker
from app.outbox import OutboxRelay
from app.worker import NotificationHandler
from tests.conftest import AppFactory, client_for, eventually
from tests.services import RedisServer, free_port

pytestmark = pytest.mark.anyio


def rows(database_url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        return conn.execute(sql).fetchall()


async def test_writes_and_events_are_atomic(client: httpx.AsyncClient, database_url: str) -> None:
    task = (await client.post("/tasks/", json={"title": "evented"})).json()
    await client.patch(f"/tasks/{task['id']}", json={"title": "renamed"})
    await client.patch(f"/tasks/{task['id']}", json={"status": "done"})
    await client.patch(f"/tasks/{task['id']}", json={"status": "done"})
    await client.delete(f"/tasks/{task['id']}")
    actions = rows(database_url, "SELECT task_id, action FROM outbox ORDER BY id")
    assert actions == [
        (task["id"], "created"),
        (task["id"], "updated"),
        (task["id"], "completed"),
        (task["id"], "updated"),
        (task["id"], "deleted"),
    ]


async def test_delivery_survives_a_broker_outage(make_app: AppFactory, database_url: str, tmp_path: Path) -> None:
    server = RedisServer(workdir=tmp_path, port=free_port())
    server.start()
    settings = Settings(database_url=database_url, redis_url=server.url, db_pool_size=2, instance_id="worker-1")
    db = Database(settings)
    await db.open()
    publisher = RedisStreamsBroker(server.url, settings.events_topic, settings.consumer_group, "relay")
    consumer = RedisStreamsBroker(server.url, settings.events_topic, settings.consumer_group, "consumer-1")
    relay = OutboxRelay(db.primary, publisher, batch_size=4)
    handler = NotificationHandler(db.primary, "worker-1")
    try:
        app = await make_app(redis_url=server.url)
        async with client_for(app) as client:
            first = (await client.post("/tasks/", json={"title": "before"})).json()
            assert await relay.drain() == 1

            server.stop()  # the broker goes away; the API keeps accepting writes
            created = [(await client.post("/tasks/", json={"title": f"during {i}"})).json() for i in range(9)]
            done = await client.patch(f"/tasks/{created[0]['id']}", json={"status": "done"})
            assert done.status_code == 200
            with pytest.raises(redis.exceptions.ConnectionError):
                await relay.run_once()
            backlog = rows(database_url, "SELECT count(*) FROM outbox WHERE published_at IS NULL")
            assert backlog == [(10,)]

            server.start()  # back, empty (no persistence): the stream and group are recreated
            stop = asyncio.Event()
            relay_task = asyncio.create_task(relay.run(stop))
            consume_task = asyncio.create_task(consumer.consume(handler, stop))
            await eventually(lambda: handler.handled >= 10, timeout=6, what="10 events handled")
            stop.set()
            await asyncio.wait_for(asyncio.gather(relay_task, consume_task), 10)

        assert rows(database_url, "SELECT count(*) FROM outbox WHERE published_at IS NULL") == [(0,)]
        handled = rows(database_url, "SELECT task_id, action FROM notifications ORDER BY processed_at, task_id")
        expected = {(t["id"], "created") for t in created} | {(created[0]["id"], "completed")}
        assert set(handled) == expected  # the pre-outage event went to the stream lost with Redis
        assert len(handled) == 10
        assert first["id"] not in {t for t, _ in handled}

        # Redelivery (at-least-once) is absorbed: notifications are keyed by event id.
        with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
            conn.execute("UPDATE outbox SET published_at = NULL")
        assert await relay.drain() == 11
        stop = asyncio.Event()
        consume_task = asyncio.create_task(consumer.consume(handler, stop))
        await eventually(
            lambda: handler.duplicates >= 10 and handler.handled >= 11, timeout=6, what="redeliveries absorbed"
        )
        stop.set()
        await asyncio.wait_for(consume_task, 10)
        assert handler.handled == 11  # the lost pre-outage event is now delivered too
        assert rows(database_url, "SELECT count(*) FROM notifications") == [(11,)]
    finally:
        await publisher.close()
        await consumer.close()
        await db.close()
        server.stop()


async def test_event_payload_shape(client: httpx.AsyncClient, database_url: str, redis_url: str) -> None:
    settings = Settings(database_url=database_url, redis_url=redis_url, db_pool_size=1)
    db = Database(settings)
    await db.open()
    broker = RedisStreamsBroker(redis_url, "shape-test", "g", "c")
    try:
        task = (await client.post("/tasks/", json={"title": "shape"})).json()
        relay = OutboxRelay(db.primary, broker)
        assert await relay.drain() == 1
        entries: Any = await broker.redis.xrange("shape-test")
        import orjson

        event = orjson.loads(entries[0][1][b"payload"])
        assert event["taskId"] == task["id"]
        assert event["action"] == "created"
        assert {"eventId", "occurredAt", "task"} <= set(event)
        assert event["task"]["title"] == "shape"
    finally:
        await broker.close()
        await db.close()
