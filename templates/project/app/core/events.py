"""Task events and the broker interface, with Redis Streams and Kafka backends.

Event (JSON): ``{"eventId", "taskId", "action", "occurredAt", "task"}``; ``taskId`` and ``action``
(created | updated | completed | deleted) are the tutorial's ``{taskId, action}`` shape.

Delivery is at least once, in order per task:
  * one relay publishes (app/outbox.py: the leader holds a PostgreSQL advisory lock) in outbox
    order, and marks rows published only after the broker acknowledged them; Kafka keys every
    event by its task id (one partition per task), Redis Streams keeps one stream;
  * a consumer acknowledges an event only after the handler returned (the worker deduplicates
    by ``eventId``, so a redelivery is harmless);
  * a failing event is retried in place (later events wait, so a task's events stay in order):
    failures of the handler's dependencies (the database down) are retried until they answer
    and never count; failures of the event itself count, and after ``EVENTS_MAX_DELIVERIES`` the
    event goes to the dead-letter stream or topic ``<topic>.dead`` with the error;
  * entries a consumer read and never acknowledged (it died) are delivered again: Redis Streams
    to the same consumer name after a restart, or to any consumer through XAUTOCLAIM once idle
    for ``EVENTS_CLAIM_IDLE_SECONDS``; Kafka through the group's rebalancing (uncommitted offsets
    are consumed again). Redis counts every delivery: an entry delivered more than
    ``EVENTS_MAX_DELIVERIES`` times (a worker that crashes on it) is dead-lettered unhandled;
  * the stream is trimmed only below what every consumer group has acknowledged (``trim``),
    never by length.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import psycopg
import redis.asyncio as aioredis
from psycopg_pool import PoolTimeout
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.retry import Retry

from app.core.config import Settings

log = logging.getLogger(__name__)

DEAD_LETTER_SUFFIX = ".dead"


@dataclass(frozen=True)
class Event:
    key: str  # partition / ordering key: the task id
    payload: bytes  # JSON

    def decoded(self) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(self.payload)
        return value


@dataclass
class Delivery:
    """One event as a consumer received it: its broker position and how often it was delivered."""

    event: Event
    position: Any  # Redis: the entry id; Kafka: (TopicPartition, offset)
    deliveries: int = 1


Handler = Callable[[Sequence[Event]], Awaitable[None]]


class TransientError(Exception):
    """A handler's dependency failed (not the event): retried without counting."""


# What a handler raises when its dependencies (not the event) failed.
TRANSIENT = (TransientError, psycopg.OperationalError, PoolTimeout, OSError, TimeoutError, RedisConnectionError)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT) and not isinstance(exc, psycopg.errors.QueryCanceled)


@dataclass
class ConsumerStats:
    """What the worker's /metrics shows about consumption."""

    handled_batches: int = 0
    failed: int = 0  # handler failures that were the event's fault
    dead_lettered: int = 0
    transient_failures: int = 0
    lag: int | None = None  # events in the stream/topic not yet delivered to the group
    pending: int | None = None  # delivered, not acknowledged (Redis)
    last_tick: float = field(default_factory=time.monotonic)


class Broker(Protocol):
    stats: ConsumerStats

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> bool: ...

    async def publish(self, events: Sequence[Event]) -> None:
        """Return only after the broker acknowledged every event; raise otherwise."""
        ...

    async def consume(self, handler: Handler, stop: asyncio.Event) -> None:
        """Deliver batches to ``handler``; acknowledge an event only after it was handled or
        dead-lettered (see the module docstring)."""
        ...

    async def trim(self) -> int:
        """Drop what every consumer group acknowledged (where the broker keeps it); how many."""
        ...

    async def refresh_lag(self) -> None:
        """Update ``stats.lag`` and ``stats.pending`` where the broker is asked for them."""
        ...


class BrokerLost(Exception):
    """The broker stopped answering: the consumer is started afresh once it answers again."""


class Stopped(Exception):
    """The worker is stopping: leave the rest unacknowledged (it is delivered again)."""


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return
    raise Stopped


async def _until_dependencies_answer(
    call: Callable[[], Awaitable[None]], stats: ConsumerStats, stop: asyncio.Event
) -> None:
    """``call()``, retried while it fails for a transient reason (logged once per outage)."""
    delay = 0.5
    failing = False
    while True:
        try:
            await call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            stats.transient_failures += 1
            if not failing:
                log.warning("event handler's dependencies failing, retrying: %s", exc)
                failing = True
            stats.last_tick = time.monotonic()
            await _wait(stop, delay)
            delay = min(delay * 2, 5.0)
            continue
        if failing:
            log.warning("event handler's dependencies answer again")
        return


async def deliver(
    handler: Handler,
    deliveries: Sequence[Delivery],
    *,
    max_deliveries: int,
    dead_letter: Callable[[Delivery, str], Awaitable[None]],
    stats: ConsumerStats,
    stop: asyncio.Event,
) -> None:
    """Handle ``deliveries`` in order; return once each was handled or dead-lettered (raises
    ``Stopped`` when the worker stops first). See the module docstring for the policy."""
    todo: list[Delivery] = []
    for item in deliveries:
        if item.deliveries > max_deliveries:
            await dead_letter(item, f"delivered {item.deliveries} times without an acknowledgement")
            stats.dead_lettered += 1
        else:
            todo.append(item)
    if not todo:
        return
    try:
        await _until_dependencies_answer(lambda: handler([d.event for d in todo]), stats, stop)
        stats.handled_batches += 1
        return
    except Stopped:
        raise
    except Exception:  # noqa: BLE001, S110 - some event of the batch fails: find which, one by one
        pass
    for item in todo:
        failures = item.deliveries - 1
        single = [item.event]

        async def handle_one(events: list[Event] = single) -> None:
            await handler(events)

        while True:
            try:
                await _until_dependencies_answer(handle_one, stats, stop)
                break
            except Stopped:
                raise
            except Exception as exc:  # noqa: BLE001 - the event's own fault
                failures += 1
                stats.failed += 1
                reason = f"{type(exc).__name__}: {exc}"
                if failures >= max_deliveries:
                    log.warning(
                        "event dead-lettered after %d failures: %s", failures, reason, extra={"key": item.event.key}
                    )
                    await dead_letter(item, reason)
                    stats.dead_lettered += 1
                    break
                await _wait(stop, min(0.1 * 2**failures, 2.0))


class RedisStreamsBroker:
    """XADD to the stream named after the topic; consumer group via XREADGROUP / XACK / XAUTOCLAIM."""

    def __init__(
        self,
        redis_url: str,
        topic: str,
        group: str,
        consumer: str,
        *,
        max_deliveries: int = 5,
        claim_idle_seconds: float = 30.0,
    ) -> None:
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            redis_url, socket_timeout=5, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
        )
        self.topic = topic
        self.dead_topic = topic + DEAD_LETTER_SUFFIX
        self.group = group
        self.consumer = consumer
        self.max_deliveries = max_deliveries
        self.claim_idle_ms = int(claim_idle_seconds * 1000)
        self.stats = ConsumerStats()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except Exception:  # noqa: BLE001
            return False

    async def publish(self, events: Sequence[Event]) -> None:
        # No MAXLEN: trimming by length could drop events no consumer has read (see trim()).
        async with self.redis.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.xadd(self.topic, {"key": event.key, "payload": event.payload})
            await pipe.execute()

    async def _ensure_group(self) -> None:
        try:
            # Id 0: a group created after the relay already published still sees every entry.
            await self.redis.xgroup_create(self.topic, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _dead_letter(self, item: Delivery, reason: str) -> None:
        fields = {
            "key": item.event.key,
            "payload": item.event.payload,
            "error": reason[:2000],
            "deliveries": str(item.deliveries),
            "source_id": str(item.position),
            "group": self.group,
        }
        await self.redis.xadd(self.dead_topic, fields)  # type: ignore[arg-type]

    async def _with_delivery_counts(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[Delivery]:
        """Deliveries of entries read again (pending or claimed), with Redis's delivery counts."""
        counts: dict[bytes, int] = {}
        if entries:
            pending: Any = await self.redis.xpending_range(
                self.topic, self.group, min=entries[0][0], max=entries[-1][0], count=len(entries) * 4 + 10
            )
            counts = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        return [self._delivery(entry_id, fields, counts.get(entry_id, 1)) for entry_id, fields in entries]

    def _delivery(self, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int) -> Delivery:
        if b"payload" not in fields:  # not an event (written by hand?): dead-lettered as it is
            raw = {name.decode(errors="replace"): value.decode(errors="replace") for name, value in fields.items()}
            return Delivery(Event(key="", payload=orjson.dumps(raw)), entry_id.decode(), self.max_deliveries + 1)
        key = fields.get(b"key", b"").decode()
        return Delivery(Event(key=key, payload=fields[b"payload"]), entry_id.decode(), deliveries)

    async def _claim(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Entries idle for claim_idle on any consumer of the group (a dead one): now ours."""
        reply: Any = await self.redis.xautoclaim(
            self.topic, self.group, self.consumer, self.claim_idle_ms, start_id="0-0", count=100
        )
        entries = [(entry_id, fields) for entry_id, fields in reply[1] if fields is not None]
        return entries

    async def consume(self, handler: Handler, stop: asyncio.Event) -> None:
        await self._ensure_group()
        # What this consumer read but did not acknowledge before a crash (same name after a
        # restart) comes first; then new entries, and now and then what a dead consumer left.
        start = "0"
        last_claim = time.monotonic()
        claim_every = min(self.claim_idle_ms / 2000, 10.0)
        while not stop.is_set():
            self.stats.last_tick = time.monotonic()
            deliveries: list[Delivery] = []
            if time.monotonic() - last_claim >= claim_every:
                last_claim = time.monotonic()
                claimed = await self._claim()
                if claimed:
                    deliveries = await self._with_delivery_counts(claimed)
            if not deliveries:
                try:
                    response: Any = await self.redis.xreadgroup(
                        self.group,
                        self.consumer,
                        {self.topic: start},
                        count=100,
                        # Short block: SIGTERM is noticed within 250 ms (a fast `down`).
                        block=None if start == "0" else 250,
                    )
                except ResponseError as exc:
                    if "NOGROUP" in str(exc):  # Redis restarted without its data
                        await self._ensure_group()
                        start = "0"
                        continue
                    raise
                entries: list[tuple[bytes, dict[bytes, bytes]]] = [
                    (entry_id, fields) for _stream, batch in response or [] for entry_id, fields in batch if fields
                ]
                if start == "0":
                    if not entries:
                        start = ">"
                        continue
                    deliveries = await self._with_delivery_counts(entries)
                else:
                    deliveries = [self._delivery(entry_id, fields, 1) for entry_id, fields in entries]
            if not deliveries:
                continue
            try:
                await deliver(
                    handler,
                    deliveries,
                    max_deliveries=self.max_deliveries,
                    dead_letter=self._dead_letter,
                    stats=self.stats,
                    stop=stop,
                )
            except Stopped:
                return
            await self.redis.xack(self.topic, self.group, *[d.position for d in deliveries])

    async def trim(self) -> int:
        """XTRIM MINID below the oldest entry some group still needs (pending, or not yet
        delivered); nothing while no group exists."""
        try:
            groups: Any = await self.redis.xinfo_groups(self.topic)
        except ResponseError:  # no stream yet
            return 0
        if not groups:
            return 0
        floor: tuple[int, int] | None = None
        for group in groups:
            name = group["name"]
            summary: Any = await self.redis.xpending(self.topic, name)
            needed = summary.get("min") if summary and summary.get("pending") else None
            candidate = _stream_id(needed) if needed else _next_id(group["last-delivered-id"])
            floor = candidate if floor is None else min(floor, candidate)
        if floor is None:
            return 0
        removed: Any = await self.redis.xtrim(self.topic, minid=f"{floor[0]}-{floor[1]}", approximate=False)
        return int(removed)

    async def refresh_lag(self) -> None:
        """Lag (entries the group has not been given yet) and pending (given, not acknowledged)."""
        try:
            groups: Any = await self.redis.xinfo_groups(self.topic)
        except ResponseError:
            self.stats.lag, self.stats.pending = 0, 0
            return
        group = next((g for g in groups if _text(g["name"]) == self.group), None)
        if group is None:
            self.stats.lag, self.stats.pending = None, None
            return
        self.stats.pending = int(group.get("pending", 0))
        lag = group.get("lag")
        if lag is None:  # Redis < 7: count what follows the last delivered id (bounded)
            after = _next_id(group["last-delivered-id"])
            rest: Any = await self.redis.xrange(self.topic, min=f"{after[0]}-{after[1]}", count=10_000)
            lag = len(rest)
        self.stats.lag = int(lag)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stream_id(value: Any) -> tuple[int, int]:
    ms, _, seq = _text(value).partition("-")
    return int(ms), int(seq or 0)


def _next_id(value: Any) -> tuple[int, int]:
    ms, seq = _stream_id(value)
    return ms, seq + 1


class KafkaBroker:
    """aiokafka producer (acks=all; idempotent unless turned off) and a consumer group with
    manual commits. Redelivery after a consumer dies comes from the group's rebalancing: the
    partitions move to a live consumer, which starts at the last committed offset."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        group: str,
        client_id: str,
        *,
        enable_idempotence: bool = True,
        max_deliveries: int = 5,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.dead_topic = topic + DEAD_LETTER_SUFFIX
        self.group = group
        self.client_id = client_id
        self.enable_idempotence = enable_idempotence
        self.max_deliveries = max_deliveries
        self.stats = ConsumerStats()
        self._producer: Any = None
        self._producer_broken = False

    async def start(self) -> None:
        return None  # the producer is created lazily so a down Kafka does not block startup

    async def _get_producer(self) -> Any:
        if self._producer is None:
            from aiokafka import AIOKafkaProducer

            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap_servers,
                client_id=self.client_id,
                acks="all",
                enable_idempotence=self.enable_idempotence,
                request_timeout_ms=10_000,
            )
            self._producer_broken = False

            def broke() -> None:
                self._producer_broken = True

            _on_broken_connection(producer.client, broke)
            try:
                await producer.start()
            except BaseException:
                await stop_client(producer)
                raise
            self._producer = producer
        return self._producer

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await stop_client(producer)

    async def ping(self) -> bool:
        return await tcp_reachable(self.bootstrap_servers)

    async def publish(self, events: Sequence[Event]) -> None:
        await self._send(self.topic, [(event.key.encode(), event.payload, None) for event in events])

    async def _send(self, topic: str, records: list[tuple[bytes, bytes, list[tuple[str, bytes]] | None]]) -> None:
        try:
            producer = await self._get_producer()
            futures = [
                await producer.send(topic, value=value, key=key, headers=headers) for key, value, headers in records
            ]
            await asyncio.gather(*futures)
            if self._producer_broken:
                # Acknowledged over a connection made after one broke: possibly by a broker that
                # restarted empty, to which aiokafka sent the batch without asking for the topic's
                # metadata first. Tansu then acknowledges records no reader finds. Not trusted:
                # the caller sends again through a new producer (duplicates carry the same event
                # id and are dropped by the consumer).
                raise BrokerLost(f"the connection to the Kafka broker {self.bootstrap_servers} broke")
        except Exception:
            await self.close()  # start afresh next time
            raise

    async def _dead_letter(self, item: Delivery, reason: str) -> None:
        tp, offset = item.position
        headers = [
            ("error", reason[:2000].encode()),
            ("source", f"{tp.topic}/{tp.partition}/{offset}".encode()),
            ("group", self.group.encode()),
        ]
        await self._send(self.dead_topic, [(item.event.key.encode(), item.event.payload, headers)])

    async def consume(self, handler: Handler, stop: asyncio.Event) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap_servers,
            group_id=self.group,
            client_id=self.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # A consumer that died is noticed within 6 s (Kafka's default is 45 s): its
            # partitions, and the events it had not committed, move to a live consumer sooner.
            session_timeout_ms=6_000,
            heartbeat_interval_ms=1_000,
        )
        # A broker that comes back without its log (the local target's Tansu keeps it in memory)
        # does not tell a consumer that lived through the restart: aiokafka reconnects within
        # 100 ms and fetches on at the old, higher positions, skipping what the new log holds
        # below them. So the moment a connection breaks every partition is paused (nothing is
        # fetched any more) and this consumer is given up: ``consume_forever`` starts a new one
        # once the broker answers, which resumes from the group's committed offsets (none on an
        # empty broker: the earliest). Against real Kafka a break costs one rebalance and
        # redelivers what was not committed (deduplicated by event id).
        lost = asyncio.Event()

        def broke() -> None:
            consumer.pause(*consumer.assignment())
            lost.set()

        _on_broken_connection(consumer._client, broke)
        await consumer.start()
        try:
            while not stop.is_set():
                self.stats.last_tick = time.monotonic()
                if lost.is_set():
                    raise BrokerLost(f"the Kafka broker {self.bootstrap_servers} stopped answering")
                batches = await consumer.getmany(timeout_ms=250, max_records=100)
                deliveries = [
                    Delivery(Event(key=(msg.key or b"").decode(), payload=msg.value), (tp, msg.offset))
                    for tp, records in batches.items()
                    for msg in records
                ]
                if deliveries:
                    try:
                        await deliver(
                            handler,
                            deliveries,
                            max_deliveries=self.max_deliveries,
                            dead_letter=self._dead_letter,
                            stats=self.stats,
                            stop=stop,
                        )
                    except Stopped:
                        return  # uncommitted: consumed again by whoever owns the partition next
                    await consumer.commit()
                lag = 0
                for tp in consumer.assignment():
                    highwater = consumer.highwater(tp)
                    if highwater is not None:
                        lag += max(highwater - await consumer.position(tp), 0)
                self.stats.lag = lag
        finally:
            await stop_client(consumer)

    async def trim(self) -> int:
        return 0  # Kafka's retention settings own the log's size

    async def refresh_lag(self) -> None:
        return None  # measured by the consumer loop itself


async def stop_client(client: Any, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Stop an aiokafka consumer or producer, bounded by ``timeout``.

    Its ``stop()`` can raise a CancelledError of its own when the broker went away in the middle
    of a request: it awaits internal tasks it has just cancelled (aio-libs/aiokafka#647). Let
    through, that error ended the worker's consume loop for good and silently (seen: a broker
    killed right after a consumer joined its group), so it is swallowed here; a cancellation of
    the caller itself (the worker stopping) still propagates."""
    try:
        await asyncio.wait_for(client.stop(), timeout)
    except TimeoutError:
        log.warning("the Kafka client did not stop within %.0fs", timeout)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("the Kafka client was cancelled while it stopped (the broker went away)")


def _on_broken_connection(client: Any, on_break: Callable[[], None]) -> None:
    """Call ``on_break()`` the moment a connection of the aiokafka ``client`` to the broker
    breaks (before the client can open a new one).

    aiokafka has no public hook for this: the client's ``_on_connection_closed`` (the
    ``on_close`` callback of every connection it opens) and ``_get_conn`` are wrapped. Why it is needed: see
    ``KafkaBroker.consume`` and ``KafkaBroker._send``, and docs/architecture.md ("Events")."""
    from aiokafka.conn import CloseReason

    original = client._on_connection_closed

    def on_closed(conn: Any, reason: Any) -> None:
        original(conn, reason)
        if reason in (CloseReason.CONNECTION_BROKEN, CloseReason.CONNECTION_TIMEOUT):
            on_break()

    # A connection whose peer closed is also dropped, without that callback, when the client
    # wants it again before its reader noticed: caught here.
    get_conn = client._get_conn

    async def get_conn_or_break(*args: Any, **kwargs: Any) -> Any:
        if any(not conn.connected() for conn in list(client._conns.values())):
            on_break()
        return await get_conn(*args, **kwargs)

    client._on_connection_closed = on_closed
    client._get_conn = get_conn_or_break


async def tcp_reachable(servers: str, timeout: float = 0.5) -> bool:  # noqa: ASYNC109
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            _reader, writer = await asyncio.wait_for(asyncio.open_connection(host or "127.0.0.1", int(port)), timeout)
        except (OSError, ValueError, TimeoutError):
            continue
        writer.close()
        return True
    return False


def make_broker(settings: Settings, consumer_name: str | None = None) -> RedisStreamsBroker | KafkaBroker:
    name = consumer_name or settings.instance_id or socket.gethostname()
    if settings.broker == "kafka":
        return KafkaBroker(
            settings.kafka_bootstrap_servers,
            settings.events_topic,
            settings.consumer_group,
            name,
            enable_idempotence=settings.kafka_enable_idempotence,
            max_deliveries=settings.events_max_deliveries,
        )
    return RedisStreamsBroker(
        settings.redis_url,
        settings.events_topic,
        settings.consumer_group,
        name,
        max_deliveries=settings.events_max_deliveries,
        claim_idle_seconds=settings.events_claim_idle_seconds,
    )


__all__ = [
    "Broker",
    "BrokerLost",
    "ConsumerStats",
    "Delivery",
    "Event",
    "Handler",
    "KafkaBroker",
    "RedisStreamsBroker",
    "TransientError",
    "deliver",
    "is_transient",
    "make_broker",
    "stop_client",
    "tcp_reachable",
]
