"""Notifications service: ``python -m app.worker``.

Runs two loops until SIGTERM/SIGINT:
  * the outbox relay (outbox table -> broker, see app/outbox.py);
  * the consumer (group ``notification-group``), which "sends" each notification: it logs one
    JSON line per event and records it in the ``notifications`` table. The table's primary key
    is the event id, so a redelivered event (at-least-once delivery) is handled exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from app.core.config import Settings, get_settings
from app.core.db import Database
from app.core.events import Broker, Event, make_broker
from app.core.logging import configure_logging
from app.outbox import OutboxRelay

log = logging.getLogger("app.worker")

_RECORD = """
INSERT INTO notifications (event_id, task_id, action, payload, handled_by)
VALUES (%s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING RETURNING event_id
"""


class NotificationHandler:
    def __init__(self, pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]], instance_id: str) -> None:
        self.pool = pool
        self.instance_id = instance_id
        self.handled = 0
        self.duplicates = 0

    async def __call__(self, events: Sequence[Event]) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            for event in events:
                data = event.decoded()
                cur = await conn.execute(
                    _RECORD,
                    (data["eventId"], data["taskId"], data["action"], orjson.dumps(data).decode(), self.instance_id),
                )
                if await cur.fetchone() is None:
                    self.duplicates += 1
                    continue
                self.handled += 1
                # The tutorial sends an e-mail here; this service logs the notification.
                log.info(
                    "notification",
                    extra={"event_id": data["eventId"], "task_id": data["taskId"], "action": data["action"]},
                )


async def consume_forever(broker: Broker, handler: NotificationHandler, stop: asyncio.Event) -> None:
    failing = False
    while not stop.is_set():
        try:
            await broker.consume(handler, stop)
        except Exception as exc:  # noqa: BLE001 - broker or database down: retry
            if not failing:
                log.warning("consumer failing, will retry: %s", exc)
            failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        else:
            failing = False


async def purge_forever(relay: OutboxRelay, settings: Settings, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 60.0)
        with contextlib.suppress(Exception):
            await relay.purge(settings.outbox_retention_seconds, settings.idempotency_retention_seconds)


async def heartbeat_forever(path: str, stop: asyncio.Event, interval: float = 5.0) -> None:
    """Touch ``path`` every ``interval`` s while the worker's loops run (a container healthcheck
    reads its age: a wedged or dead event loop stops touching it)."""
    beat = Path(path)
    while not stop.is_set():
        await asyncio.to_thread(beat.touch)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def run(settings: Settings, stop: asyncio.Event) -> None:
    db = Database(settings)
    await db.open()
    publisher = make_broker(settings)
    consumer = make_broker(settings)
    relay = OutboxRelay(
        db.primary,
        publisher,
        batch_size=settings.outbox_batch_size,
        poll_interval=settings.outbox_poll_interval_seconds,
    )
    handler = NotificationHandler(db.primary, settings.instance_id)
    log.info("worker started", extra={"broker": settings.broker, "topic": settings.events_topic})
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(relay.run(stop))
            group.create_task(consume_forever(consumer, handler, stop))
            group.create_task(purge_forever(relay, settings, stop))
            if settings.worker_heartbeat_file:
                group.create_task(heartbeat_forever(settings.worker_heartbeat_file, stop))
    finally:
        await publisher.close()
        await consumer.close()
        await db.close()
        log.info("worker stopped", extra={"published": relay.published, "handled": handler.handled})


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.instance_id, access_log=False)

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(settings, stop)

    asyncio.run(_main())


if __name__ == "__main__":
    main()
