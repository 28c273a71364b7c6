"""Outbox relay: publish unpublished outbox rows in id order, mark them after the broker acked.

Several relays may run (one per worker): ``FOR UPDATE SKIP LOCKED`` gives each a disjoint batch.
If the broker is down the transaction rolls back, the rows stay unpublished and the relay
retries with backoff, so no event is lost; a crash after the broker ack but before the commit
re-sends that batch (at-least-once; consumers deduplicate by event id).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC
from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from app.core.events import Broker, Event

log = logging.getLogger(__name__)

_CLAIM = """
SELECT id, event_id, task_id, action, payload, created_at FROM outbox
WHERE published_at IS NULL ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED
"""
_MARK = "UPDATE outbox SET published_at = now() WHERE id = ANY(%s)"
_PURGE = "DELETE FROM outbox WHERE published_at < now() - make_interval(secs => %s)"
_PURGE_KEYS = "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => %s)"


def event_from_row(row: tuple[Any, ...]) -> Event:
    _id, event_id, task_id, action, task, created_at = row
    payload = {
        "eventId": str(event_id),
        "taskId": task_id,
        "action": action,
        "occurredAt": created_at.astimezone(UTC),
        "task": task,
    }
    return Event(key=str(task_id), payload=orjson.dumps(payload))


class OutboxRelay:
    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]],
        broker: Broker,
        *,
        batch_size: int = 100,
        poll_interval: float = 0.2,
    ) -> None:
        self.pool = pool
        self.broker = broker
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.published = 0

    async def run_once(self) -> int:
        """Publish one batch. Returns how many events were published (0 if none pending)."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(_CLAIM, (self.batch_size,))
            rows = await cur.fetchall()
            if not rows:
                return 0
            await self.broker.publish([event_from_row(row) for row in rows])
            await conn.execute(_MARK, ([row[0] for row in rows],))
        self.published += len(rows)
        return len(rows)

    async def drain(self) -> int:
        total = 0
        while (n := await self.run_once()) > 0:
            total += n
        return total

    async def purge(self, outbox_retention: int, idempotency_retention: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(_PURGE, (outbox_retention,))
            await conn.execute(_PURGE_KEYS, (idempotency_retention,))

    async def run(self, stop: asyncio.Event) -> None:
        backoff = self.poll_interval
        failing = False
        while not stop.is_set():
            try:
                n = await self.run_once()
            except Exception as exc:  # noqa: BLE001 - broker or database down: keep the rows, retry
                if not failing:
                    log.warning("outbox relay failing, will retry: %s", exc)
                failing = True
                backoff = min(max(backoff * 2, 0.5), 10.0)
                await _sleep_or_stop(stop, backoff)
                continue
            if failing:
                log.warning("outbox relay recovered")
                failing = False
                backoff = self.poll_interval
            if n < self.batch_size:
                await _sleep_or_stop(stop, self.poll_interval)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
