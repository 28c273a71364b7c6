"""Outbox relay: publish unpublished outbox rows in id order, mark them after the broker acked.

One relay publishes at a time, whatever the number of workers: the leader holds a PostgreSQL
session-level advisory lock on a connection of its own and runs every batch on that same
connection, so a leader whose session ended (crash, network) cannot publish another batch, and
another worker takes the lock within ``lock_retry`` seconds. One publisher in id order keeps
each task's events in order (two writes to one task are serialised by its row lock, so their
outbox ids follow their commits).

If the broker is down the transaction rolls back, the rows stay unpublished and the relay
retries with backoff, so no event is lost; a crash after the broker ack but before the commit
re-sends that batch (at-least-once; consumers deduplicate by event id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import orjson
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from app.core.db import Database
from app.core.events import Broker, Event

log = logging.getLogger(__name__)

# pg_try_advisory_lock's key: any constant the app's other locks do not use ("outbox" in ASCII).
RELAY_LOCK = 0x6F7574626F78
_LOCK = "SELECT pg_try_advisory_lock(%s)"
_CLAIM = """
SELECT id, event_id, task_id, action, payload, created_at FROM outbox
WHERE published_at IS NULL ORDER BY id LIMIT %s FOR UPDATE
"""
_MARK = "UPDATE outbox SET published_at = now() WHERE id = ANY(%s)"
_PURGE = "DELETE FROM outbox WHERE published_at < now() - make_interval(secs => %s)"
_PURGE_KEYS = "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => %s)"
_STATS = """
SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)
FROM outbox WHERE published_at IS NULL
"""


@dataclass(frozen=True)
class OutboxStats:
    backlog: int
    oldest_age_seconds: float


async def outbox_stats(db: Database) -> OutboxStats:
    """Events waiting to be published, and how long the oldest has waited."""
    async with db.primary.connection(timeout=1.0) as conn:
        cur = await conn.execute(_STATS)
        row = await cur.fetchone()
    return OutboxStats(0, 0.0) if row is None else OutboxStats(int(row[0]), float(row[1]))


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
        lock_retry: float = 1.0,
    ) -> None:
        self.pool = pool
        self.broker = broker
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.lock_retry = lock_retry
        self.published = 0
        self.leader = False
        self.last_tick = time.monotonic()
        self.failing = False  # set by the worker when it starts with the broker down

    async def run_once(self, conn: AsyncConnection[tuple[Any, ...]] | None = None) -> int:
        """Publish one batch (on ``conn``, the leader's, or a pooled connection). Returns how
        many events were published (0 if none pending)."""
        if conn is None:
            async with self.pool.connection() as pooled:
                return await self.run_once(pooled)
        async with conn.transaction():
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
        """Until ``stop``: become the leader, then publish as long as the lock is held."""
        while not stop.is_set():
            self.last_tick = time.monotonic()
            try:
                conn = await self.pool.getconn()
            except Exception as exc:  # noqa: BLE001 - the database is down: keep trying
                self._failed(exc)
                await _sleep_or_stop(stop, self.lock_retry)
                continue
            try:
                cur = await conn.execute(_LOCK, (RELAY_LOCK,))
                row = await cur.fetchone()
                if row is None or not row[0]:
                    await _sleep_or_stop(stop, self.lock_retry)  # another worker's relay leads
                    continue
                self.leader = True
                log.info("outbox relay is the leader")
                await self._lead(conn, stop)
            except Exception as exc:  # noqa: BLE001 - lost the database: the lock went with the session
                self._failed(exc)
                await _sleep_or_stop(stop, self.lock_retry)
            finally:
                if self.leader:
                    self.leader = False
                    with contextlib.suppress(Exception):
                        await conn.execute("SELECT pg_advisory_unlock(%s)", (RELAY_LOCK,))
                await self.pool.putconn(conn)

    async def _lead(self, conn: AsyncConnection[tuple[Any, ...]], stop: asyncio.Event) -> None:
        backoff = self.poll_interval
        while not stop.is_set():
            self.last_tick = time.monotonic()
            try:
                n = await self.run_once(conn)
            except Exception as exc:
                if conn.broken:
                    raise  # the session (and the lock) is gone: start over
                self._failed(exc)  # broker down: keep the rows and the lock, retry
                backoff = min(max(backoff * 2, 0.5), 10.0)
                await _sleep_or_stop(stop, backoff)
                continue
            if self.failing:
                log.warning("outbox relay recovered")
                self.failing = False
                backoff = self.poll_interval
            if n < self.batch_size:
                await _sleep_or_stop(stop, self.poll_interval)

    def _failed(self, exc: BaseException) -> None:
        if not self.failing:
            log.warning("outbox relay failing, will retry: %s", exc)
        self.failing = True


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
