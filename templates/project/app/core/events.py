"""Task events and the broker interface, with Redis Streams and Kafka backends.

Event (JSON): ``{"eventId", "taskId", "action", "occurredAt", "task"}``; ``taskId`` and ``action``
(created | updated | completed | deleted) are the tutorial's ``{taskId, action}`` shape.

Delivery is at least once: the relay marks outbox rows published only after the broker
acknowledged them, so a crash between the two re-sends a batch; consumers deduplicate by
``eventId`` (see app/worker.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError
from redis.retry import Retry

from app.core.config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    key: str  # partition / ordering key: the task id
    payload: bytes  # JSON

    def decoded(self) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(self.payload)
        return value


Handler = Callable[[Sequence[Event]], Awaitable[None]]


class Broker(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> bool: ...

    async def publish(self, events: Sequence[Event]) -> None:
        """Return only after the broker acknowledged every event; raise otherwise."""
        ...

    async def consume(self, handler: Handler, stop: asyncio.Event) -> None:
        """Deliver batches to ``handler``; acknowledge a batch only after it returned."""
        ...


class RedisStreamsBroker:
    """XADD to the stream named after the topic; consumer group via XREADGROUP / XACK."""

    def __init__(self, redis_url: str, topic: str, group: str, consumer: str, maxlen: int = 1_000_000) -> None:
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            redis_url, socket_timeout=5, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
        )
        self.topic = topic
        self.group = group
        self.consumer = consumer
        self.maxlen = maxlen

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
        async with self.redis.pipeline(transaction=False) as pipe:
            for event in events:
                fields = {"key": event.key, "payload": event.payload}
                pipe.xadd(self.topic, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
            await pipe.execute()

    async def _ensure_group(self) -> None:
        try:
            # Id 0: a group created after the relay already published still sees every entry.
            await self.redis.xgroup_create(self.topic, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def consume(self, handler: Handler, stop: asyncio.Event) -> None:
        await self._ensure_group()
        pending_first = True  # re-deliver what this consumer read but did not ack before a crash
        while not stop.is_set():
            try:
                response: Any = await self.redis.xreadgroup(
                    self.group,
                    self.consumer,
                    {self.topic: "0" if pending_first else ">"},
                    count=100,
                    # Short block: SIGTERM is noticed within 250 ms (a fast `down`).
                    block=None if pending_first else 250,
                )
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis restarted without persistence
                    await self._ensure_group()
                    pending_first = True
                    continue
                raise
            entries: list[tuple[bytes, dict[bytes, bytes]]] = [
                entry for _stream, batch in response or [] for entry in batch
            ]
            if pending_first and not entries:
                pending_first = False
                continue
            events = [
                Event(key=fields[b"key"].decode(), payload=fields[b"payload"]) for _id, fields in entries if fields
            ]
            if events:
                await handler(events)
            if entries:
                await self.redis.xack(self.topic, self.group, *[entry_id for entry_id, _ in entries])


class KafkaBroker:
    """aiokafka producer (acks=all, idempotent) and consumer group with manual commits."""

    def __init__(self, bootstrap_servers: str, topic: str, group: str, client_id: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.group = group
        self.client_id = client_id
        self._producer: Any = None

    async def start(self) -> None:
        return None  # the producer is created lazily so a down Kafka does not block startup

    async def _get_producer(self) -> Any:
        if self._producer is None:
            from aiokafka import AIOKafkaProducer

            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap_servers,
                client_id=self.client_id,
                acks="all",
                enable_idempotence=True,
                request_timeout_ms=10_000,
            )
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def ping(self) -> bool:
        return await tcp_reachable(self.bootstrap_servers)

    async def publish(self, events: Sequence[Event]) -> None:
        try:
            producer = await self._get_producer()
            futures = [
                await producer.send(self.topic, value=event.payload, key=event.key.encode()) for event in events
            ]
            await asyncio.gather(*futures)
        except Exception:
            await self.close()  # start afresh next time
            raise

    async def consume(self, handler: Handler, stop: asyncio.Event) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap_servers,
            group_id=self.group,
            client_id=self.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=1000, max_records=100)
                events = [
                    Event(key=(msg.key or b"").decode(), payload=msg.value)
                    for records in batches.values()
                    for msg in records
                ]
                if events:
                    await handler(events)
                    await consumer.commit()
        finally:
            await consumer.stop()


async def tcp_reachable(servers: str, timeout: float = 1.0) -> bool:  # noqa: ASYNC109
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            _reader, writer = await asyncio.wait_for(asyncio.open_connection(host or "127.0.0.1", int(port)), timeout)
        except (OSError, ValueError, TimeoutError):
            continue
        writer.close()
        return True
    return False


def make_broker(settings: Settings, consumer_name: str | None = None) -> Broker:
    name = consumer_name or settings.instance_id or socket.gethostname()
    if settings.broker == "kafka":
        return KafkaBroker(settings.kafka_bootstrap_servers, settings.events_topic, settings.consumer_group, name)
    return RedisStreamsBroker(settings.redis_url, settings.events_topic, settings.consumer_group, name)
