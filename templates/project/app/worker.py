"""Notifications worker: ``python -m app.worker``.

Runs until SIGTERM/SIGINT:
  * the outbox relay (outbox table -> broker, see app/outbox.py; one leader among the workers);
  * the consumer (group ``notification-group``), which "sends" each notification: it logs one
    JSON line per event and records it in the ``notifications`` table. The table's primary key
    is the event id, so a redelivered event (at-least-once delivery) is handled exactly once;
    an event that keeps failing goes to the dead-letter stream (app/core/events.py);
  * an HTTP server on ``WORKER_PORT`` (default 8001) for probes and Prometheus:
    ``/healthz`` (200 while its loops run), ``/readyz`` (200 while the database answers:
    ``degraded`` with the broker down) and ``/metrics`` (README, "Metrics").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from app.core import httpserver
from app.core.config import Settings, get_settings
from app.core.db import Database
from app.core.events import Broker, Event, make_broker
from app.core.logging import configure_logging
from app.core.metrics import Snapshot, counter_family, gauge_family
from app.outbox import OutboxRelay, OutboxStats, outbox_stats

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("app.worker")

# A loop that has not come round for this long is stuck: /healthz fails (and the pod restarts).
STUCK_AFTER_SECONDS = 60.0

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
        handled = duplicates = 0
        async with self.pool.connection() as conn, conn.transaction():
            for event in events:
                data = event.decoded()
                cur = await conn.execute(
                    _RECORD,
                    (data["eventId"], data["taskId"], data["action"], orjson.dumps(data).decode(), self.instance_id),
                )
                if await cur.fetchone() is None:
                    duplicates += 1
                    continue
                handled += 1
                # The tutorial sends an e-mail here; this service logs the notification.
                log.info(
                    "notification",
                    extra={"event_id": data["eventId"], "task_id": data["taskId"], "action": data["action"]},
                )
        # Counted once the transaction committed (a rolled-back batch is handled again).
        self.handled += handled
        self.duplicates += duplicates


async def consume_forever(
    broker: Broker, handler: NotificationHandler, stop: asyncio.Event, failing: bool = False
) -> None:
    """``failing``: the broker did not answer at start (already said in the start-up line)."""
    while not stop.is_set():
        broker.stats.last_tick = time.monotonic()
        try:
            await broker.consume(handler, stop)
        except Exception as exc:  # noqa: BLE001 - broker or database down: retry
            if not failing:
                log.warning("consumer failing, will retry: %s", exc)
            failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        else:
            if failing:
                log.warning("consumer recovered")
            failing = False


async def maintain_forever(relay: OutboxRelay, broker: Broker, settings: Settings, stop: asyncio.Event) -> None:
    """Every minute: purge old outbox rows and idempotency keys, trim the stream below what
    every consumer group acknowledged."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 60.0)
        with contextlib.suppress(Exception):
            await relay.purge(settings.outbox_retention_seconds, settings.idempotency_retention_seconds)
        with contextlib.suppress(Exception):
            if relay.leader:  # one trimmer is enough
                await broker.trim()


async def heartbeat_forever(path: str, stop: asyncio.Event, interval: float = 5.0) -> None:
    """Touch ``path`` every ``interval`` s while the worker's loops run (a container healthcheck
    reads its age: a wedged or dead event loop stops touching it)."""
    beat = Path(path)
    while not stop.is_set():
        await asyncio.to_thread(beat.touch)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


class WorkerState:
    """What the worker's HTTP endpoints report."""

    def __init__(self, db: Database, relay: OutboxRelay, consumer: Broker, handler: NotificationHandler) -> None:
        self.db = db
        self.relay = relay
        self.consumer = consumer
        self.handler = handler
        self.registry = CollectorRegistry(auto_describe=True)
        self.outbox = OutboxStats(0, 0.0)
        snapshot = Snapshot()
        snapshot.sources["worker"] = self.families
        self.registry.register(snapshot)

    def stuck(self) -> list[str]:
        now = time.monotonic()
        ticks = {"relay": self.relay.last_tick, "consumer": self.consumer.stats.last_tick}
        return [name for name, tick in ticks.items() if now - tick > STUCK_AFTER_SECONDS]

    async def healthz(self) -> tuple[int, str, bytes]:
        stuck = self.stuck()
        body = {"status": "stuck" if stuck else "ok", "stuck": stuck}
        return (503 if stuck else 200), "application/json", orjson.dumps(body)

    async def readyz(self) -> tuple[int, str, bytes]:
        broker_ok = await _bounded(self.consumer.ping())
        ready = self.db.primary_up
        degraded = [] if broker_ok else ["broker"]
        status = "unavailable" if not ready else ("degraded" if degraded else "ok")
        body = {
            "status": status,
            "checks": {"database": "ok" if ready else "down", "broker": "ok" if broker_ok else "down"},
            "degraded": degraded,
            "relay_leader": self.relay.leader,
        }
        return (200 if ready else 503), "application/json", orjson.dumps(body)

    async def metrics(self) -> tuple[int, str, bytes]:
        with contextlib.suppress(Exception):
            self.outbox = await asyncio.wait_for(outbox_stats(self.db), 2.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.consumer.refresh_lag(), 2.0)
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)

    def families(self) -> Iterator[Metric]:
        stats = self.consumer.stats
        yield counter_family(
            "events_processed", "Events handled (a notification recorded).", [({}, self.handler.handled)]
        )
        yield counter_family(
            "events_duplicates",
            "Events delivered again and already handled (ignored).",
            [({}, self.handler.duplicates)],
        )
        yield counter_family("events_failed", "Handler failures that were the event's fault.", [({}, stats.failed)])
        yield counter_family(
            "events_dead_lettered", "Events moved to the dead-letter stream or topic.", [({}, stats.dead_lettered)]
        )
        yield counter_family(
            "events_transient_failures",
            "Handler failures because its dependencies did not answer (retried, not counted against the event).",
            [({}, stats.transient_failures)],
        )
        yield counter_family("outbox_published", "Outbox events this worker published.", [({}, self.relay.published)])
        yield gauge_family(
            "outbox_backlog", "Outbox events not yet published to the broker.", [({}, self.outbox.backlog)]
        )
        yield gauge_family(
            "outbox_oldest_unpublished_age_seconds",
            "Age of the oldest outbox event not yet published (0 when none).",
            [({}, self.outbox.oldest_age_seconds)],
        )
        yield gauge_family(
            "outbox_relay_leader", "1 while this worker's relay holds the leader lock.", [({}, int(self.relay.leader))]
        )
        if stats.lag is not None:
            yield gauge_family(
                "events_consumer_lag", "Events in the broker not yet delivered to the group.", [({}, stats.lag)]
            )
        if stats.pending is not None:
            yield gauge_family(
                "events_pending", "Events delivered to the group and not yet acknowledged.", [({}, stats.pending)]
            )
        yield gauge_family(
            "dependency_up",
            "1 when the database primary answers.",
            [({"dependency": "database"}, int(self.db.primary_up))],
        )


async def _bounded(check: Any, timeout: float = 0.5) -> bool:  # noqa: ASYNC109
    try:
        return bool(await asyncio.wait_for(check, timeout))
    except Exception:  # noqa: BLE001
        return False


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
    state = WorkerState(db, relay, consumer, handler)
    server = None
    if settings.worker_port:
        routes: dict[str, httpserver.Route] = {
            "/healthz": state.healthz,
            "/readyz": state.readyz,
            "/metrics": state.metrics,
        }
        try:
            server = await httpserver.serve(settings.worker_host, settings.worker_port, routes)
        except OSError as exc:  # the port is taken: serve events all the same, say it once
            log.warning("worker HTTP port %d unavailable, no probes or /metrics: %s", settings.worker_port, exc)
    # One line says how it starts (a broker or database that does not answer is retried).
    broker_ok = await _bounded(consumer.ping())
    missing = [name for name, ok in (("database", db.primary_up), ("broker", broker_ok)) if not ok]
    extra = {"broker": settings.broker, "topic": settings.events_topic, "port": settings.worker_port}
    if missing:
        log.warning(
            "worker started degraded: %s not answering; events wait in the outbox", ", ".join(missing), extra=extra
        )
        relay.failing = True
    else:
        log.info("worker started", extra=extra)
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(relay.run(stop))
            group.create_task(consume_forever(consumer, handler, stop, failing=bool(missing)))
            group.create_task(maintain_forever(relay, publisher, settings, stop))
            if settings.worker_heartbeat_file:
                group.create_task(heartbeat_forever(settings.worker_heartbeat_file, stop))
    finally:
        if server is not None:
            server.close()
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
