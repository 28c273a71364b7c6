"""Two-level, coherent cache of JSON bytes: per-process memory in front of Redis.

Any resource opts in through ``Cache.resource(name)`` (see docs/adding-a-resource.md); entries
are keyed by ``(resource, owner, id)``, so a cached body is only ever found again by a request
of the same owner. The cache is used inside the route, after FastAPI solved the route's
dependencies (authentication first): nothing answers before them.

Layout
  * Redis holds ``g{generation}:{resource}:{owner}:{id}`` -> the JSON bytes (``""`` = deleted),
    with a TTL. The generation is explained under "Outages" below.
  * Each process keeps a bounded dict ``key -> (bytes, expires_at)`` in front of it. A hit is a
    dict lookup: no network round trip, no ORM, no re-validation.

Coherence while Redis answers
  * Every write, after its database commit, writes the fresh bytes (or a tombstone) through to
    Redis and PUBLISHes the key on ``cache:invalidate`` in the same pipeline. Every process is
    SUBSCRIBEd and drops the key from its memory layer when the message arrives (a write is
    seen by its own process at once and by other processes as soon as Redis delivers the
    message, typically well under a millisecond on a LAN).
  * The memory layer is used only while the subscription is confirmed and Redis is trusted
    (below); it is cleared whenever either stops and again when both are back, so missed
    messages can never leave stale entries behind.
  * A fill that raced with an invalidation is not stored: every invalidation bumps the key's
    version (a full clear bumps a global epoch) and a fill is kept in memory only if neither
    moved while it was loading.
  * Readers fill Redis with SET NX, writers with SET, so a slow reader cannot overwrite a newer
    write-through value. Remaining window (documented): two concurrent writes to the same key
    whose Redis writes land in the opposite order of their commits; bounded by the TTL.

Outages: Redis down, hung or restarted (degraded, never a 500)
  * Every Redis call has a short timeout (``REDIS_TIMEOUT_SECONDS``), and a background task
    PINGs Redis every ``heartbeat`` seconds. The first failure marks Redis untrusted (one
    warning): requests then skip Redis and the memory layer and read the database, and the
    background task tries to trust Redis again every ``retry_after`` seconds. Requests never
    wait for it.
  * A write whose write-through could not happen would leave the old value in Redis (and in
    other processes' memory) for the TTL. So it takes a new *cache generation* instead: a
    PostgreSQL sequence (``cache_generation``), bumped with ``nextval`` on the primary right
    after the commit. Keys carry the generation, so every entry written before is orphaned
    (left to its TTL). Every process learns a new generation from the database health check
    (``DB_HEALTH_INTERVAL_SECONDS``) and clears its memory layer.
  * Before trusting Redis again a process re-reads the generation from the primary, and takes a
    new one when Redis's ``run_id`` changed (a restart may have lost the last second of
    write-throughs from its append-only file). So after Redis returns, no process serves a value
    older than the last acknowledged write.
  * Remaining window (documented): a process that still reaches Redis while another does not
    (a partial partition) may serve the old value until it sees the new generation, at most
    one health-check interval after that write.

Stampede protection: one load per key per process (single-flight); concurrent misses await it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from app.core.metrics import CacheCounters, Metrics

log = logging.getLogger(__name__)

INVALIDATION_CHANNEL = "cache:invalidate"
TOMBSTONE = b""
_FLUSH_ALL = b"*"

# (resource, owner, id): the owner is the authenticated user's id (0 for a public resource).
CacheKey = tuple[str, int, int]
Loader = Callable[[], Awaitable[bytes | None]]


def format_key(key: CacheKey) -> str:
    """``resource:owner:id``: the memory layer's key as invalidation messages carry it."""
    resource, owner, item = key
    return f"{resource}:{owner}:{item}"


def redis_key(key: CacheKey, generation: int) -> str:
    """The Redis key of ``key`` in cache generation ``generation``."""
    resource, owner, item = key
    return f"g{generation}:{resource}:{owner}:{item}"


def parse_key(text: str) -> CacheKey:
    resource, owner, item = text.rsplit(":", 2)
    return resource, int(owner), int(item)


class RedisCircuit:
    """Skip Redis for a while after a failure; log each outage once (the rate limiter's)."""

    def __init__(self, name: str, retry_after: float = 1.0) -> None:
        self.name = name
        self.retry_after = retry_after
        self.down_since: float | None = None
        self._open_until = 0.0

    @property
    def available(self) -> bool:
        return self._open_until == 0.0 or time.monotonic() >= self._open_until

    def failure(self, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("%s unavailable, degrading: %s", self.name, exc, extra={"dependency": self.name})
        self._open_until = time.monotonic() + self.retry_after

    def success(self) -> None:
        if self.down_since is not None:
            log.warning(
                "%s recovered after %.1fs",
                self.name,
                time.monotonic() - self.down_since,
                extra={"dependency": self.name},
            )
            self.down_since = None
        self._open_until = 0.0


class Cache:
    def __init__(
        self,
        redis_url: str,
        *,
        ttl_seconds: int,
        local_max_entries: int,
        local_ttl_seconds: float,
        metrics: Metrics,
        enabled: bool = True,
        timeout: float = 0.1,
        retry_after: float = 0.5,
        heartbeat: float = 0.25,
    ) -> None:
        self.enabled = enabled
        self.ttl = ttl_seconds
        self.local_max = local_max_entries
        self.local_ttl = min(local_ttl_seconds, float(ttl_seconds))
        self.retry_after = retry_after
        self.heartbeat = heartbeat
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            redis_url,
            socket_timeout=timeout,
            # A connect may include a DNS lookup (a service name in Kubernetes): a little longer.
            socket_connect_timeout=max(timeout, 0.5),
            health_check_interval=0,
            retry_on_timeout=False,
            # Fail fast, no silent retries: an error must reach the trust logic and the
            # invalidation listener at once (a silent reconnect could hide missed messages).
            retry=Retry(NoBackoff(), 0),
        )
        self.metrics = metrics
        self.local: dict[CacheKey, tuple[bytes, float]] = {}
        self.local_active = False  # True only while subscribed and Redis is trusted
        self.trusted = False  # Redis answers and its contents are known to be current
        self.subscribed = False
        self.generation: int | None = None  # None: not known yet (Redis is not used)
        self.down_since: float | None = None
        self.bypassed = 0  # lookups that skipped Redis while it was not trusted (metrics)
        self.generations_taken = 0  # new generations this process took (metrics)
        # Wired by the app: the database's cache generation (read and bump on the primary).
        self.read_generation: Callable[[], Awaitable[int]] | None = None
        self.bump_generation: Callable[[], Awaitable[int]] | None = None
        self._run_id: str | None = None
        self._epoch = 0  # bumped by every full clear of the memory layer
        self._versions: dict[CacheKey, int] = {}  # key -> invalidations seen (bounded, see below)
        self._inflight: dict[CacheKey, asyncio.Future[bytes | None]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._closing = False
        self._resources: dict[str, ResourceCache] = {}

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Trust Redis if it answers now (else start degraded and keep probing)."""
        if not self.enabled:
            return
        if not await self._try_trust():
            self._untrust(None, quiet=True)  # the app's start-up line says it
        self._watcher = asyncio.create_task(self._watch(), name="cache-watcher")
        if self.local_max > 0:
            self._listener = asyncio.create_task(self._listen(), name="cache-invalidation-listener")

    async def close(self) -> None:
        self._closing = True
        for task in (self._listener, self._watcher):
            if task is None:
                continue
            # The listener checks _closing at least once a second; cancel() alone is not
            # reliable because redis-py may turn a cancellation during a read into a timeout.
            task.cancel()
            try:
                await asyncio.wait_for(task, 3.0)
            except (asyncio.CancelledError, TimeoutError):
                pass
        await self.redis.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (RedisError, OSError):
            return False

    async def check(self) -> bool:
        """A probe's view: True when Redis answers and is trusted. A Redis that does not
        answer is marked untrusted here too (a hung Redis may be one no request touched yet:
        memory hits do not reach it, but the invalidations it should deliver are missing)."""
        if not self.enabled:
            return False
        try:
            await self.redis.ping()
        except (RedisError, OSError) as exc:
            self._untrust(exc)
            return False
        return self.trusted

    def set_generation(self, generation: int) -> None:
        """A new cache generation (seen by the database health check): forget memory entries."""
        if generation != self.generation:
            self.generation = generation
            self._invalidate_local(None)

    def redis_name(self, key: CacheKey) -> str:
        return redis_key(key, self.generation or 0)

    # --- trust --------------------------------------------------------------------------------

    def _untrust(self, exc: BaseException | None, *, quiet: bool = False) -> None:
        if self.trusted or self.down_since is None:
            self.down_since = time.monotonic()
            if not quiet:
                reason = str(exc) or type(exc).__name__
                log.warning("cache unavailable, reads go to the database: %s", reason, extra={"dependency": "cache"})
        self.trusted = False
        self._update_local()

    async def _try_trust(self) -> bool:
        """Trust Redis again: it answers, the generation is current (a new one if Redis
        restarted). Any failure leaves it untrusted."""
        try:
            info: Any = await self.redis.info("server")
            run_id = str(info.get("run_id", ""))
            if self.read_generation is not None:
                restarted = self._run_id is not None and run_id != self._run_id
                if restarted and self.bump_generation is not None:
                    await self._new_generation("Redis restarted")
                else:
                    self.set_generation(await self.read_generation())
        except Exception as exc:  # noqa: BLE001 - Redis or the database: stay degraded
            if self.trusted or self.down_since is None:
                log.debug("cache not trusted yet: %s", exc)
            return False
        self._run_id = run_id
        if self.down_since is not None:
            log.warning(
                "cache recovered after %.1fs", time.monotonic() - self.down_since, extra={"dependency": "cache"}
            )
            self.down_since = None
        self.trusted = True
        self._update_local()
        return True

    async def _watch(self) -> None:
        """PING every ``heartbeat`` seconds while trusted, so a hung Redis is noticed even by
        a process whose requests all hit its memory layer; try to trust it again every
        ``retry_after`` seconds while not. Requests never wait for either."""
        while not self._closing:
            await asyncio.sleep(self.heartbeat if self.trusted else self.retry_after)
            if not self.trusted:
                await self._try_trust()
                continue
            try:
                await self.redis.ping()
            except (RedisError, OSError) as exc:
                self._untrust(exc)

    async def _new_generation(self, why: str) -> None:
        """Orphan every Redis entry (see "Outages" in the module docstring)."""
        if self.bump_generation is None:
            return
        generation = await self.bump_generation()
        self.generations_taken += 1
        self.set_generation(generation)
        log.info("new cache generation %d: %s", generation, why, extra={"dependency": "cache"})

    def _update_local(self) -> None:
        active = self.trusted and self.subscribed and self.local_max > 0
        if active != self.local_active:
            self._invalidate_local(None)  # cleared on the way down and on the way up
            self.local_active = active

    # --- resources ------------------------------------------------------------------------------

    def resource(self, name: str) -> ResourceCache:
        """The view of this cache that one resource uses (``tasks``, ``users``, ...)."""
        view = self._resources.get(name)
        if view is None:
            if ":" in name:
                raise ValueError("a resource name cannot contain ':'")
            view = self._resources[name] = ResourceCache(self, name)
        return view

    # --- reads -------------------------------------------------------------------------------

    def get_local(self, key: CacheKey) -> bytes | None:
        entry = self.local.get(key)
        if entry is None:
            return None
        if entry[1] < time.monotonic():
            self.local.pop(key, None)
            return None
        return entry[0]

    async def get(self, key: CacheKey, load: Loader, counters: CacheCounters) -> bytes | None:
        """The JSON bytes, ``TOMBSTONE`` if known deleted, ``None`` if ``load`` found nothing."""
        if not self.enabled:
            return await load()
        if self.local_active:
            body = self.get_local(key)
            if body is not None:
                counters.hit_local.inc()
                return body
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            body = await self._load(key, load, counters)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters (if any) re-raise it themselves
            raise
        else:
            future.set_result(body)
            return body
        finally:
            del self._inflight[key]

    async def _load(self, key: CacheKey, load: Loader, counters: CacheCounters) -> bytes | None:
        if not self.trusted:
            self.bypassed += 1
            counters.miss.inc()
            return await load()
        seq = (self._epoch, self._versions.get(key, 0))
        name = self.redis_name(key)
        try:
            cached: Any = await self.redis.get(name)
        except (RedisError, OSError) as exc:
            self._untrust(exc)
        else:
            if cached is not None:
                counters.hit_redis.inc()
                body_cached = bytes(cached)
                self._store_local(key, body_cached, seq)
                return body_cached
        counters.miss.inc()
        body = await load()
        if body is None:
            return None  # absent ids are not cached: identity ids may still be created
        if self.trusted:
            try:
                await self.redis.set(name, body, ex=self.ttl, nx=True)
            except (RedisError, OSError) as exc:
                self._untrust(exc)
        self._store_local(key, body, seq)
        return body

    def _store_local(self, key: CacheKey, body: bytes, seq: tuple[int, int]) -> None:
        if not self.local_active:
            return
        if seq[0] != self._epoch or seq[1] != self._versions.get(key, 0):
            return
        if len(self.local) >= self.local_max:
            # Evict the oldest insertion (dicts keep insertion order): O(1), no LRU bookkeeping
            # on the hit path.
            self.local.pop(next(iter(self.local)), None)
        self.local[key] = (body, time.monotonic() + self.local_ttl)

    # --- writes ------------------------------------------------------------------------------

    async def written(self, key: CacheKey, body: bytes | None, *, created: bool = False) -> None:
        """Call after a committed write. ``body`` None means the item was deleted."""
        if not self.enabled:
            return
        if not created:  # a new id cannot be in any memory layer (misses are not cached)
            self._invalidate_local(key)
        if self.trusted:
            value = TOMBSTONE if body is None else body
            name = self.redis_name(key)
            try:
                if created:
                    # A new id cannot be in any memory layer: warm Redis, no broadcast needed.
                    await self.redis.set(name, value, ex=self.ttl)
                else:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        pipe.set(name, value, ex=self.ttl)
                        pipe.publish(INVALIDATION_CHANNEL, format_key(key))
                        await pipe.execute()
                return
            except (RedisError, OSError) as exc:
                self._untrust(exc)
        if created:
            return  # nothing can hold an older copy of a new id
        # The write could not reach Redis: its old value (there, and in other processes'
        # memory) must not be served again. A new generation orphans it.
        try:
            await self._new_generation("a write could not reach the cache")
        except Exception as exc:  # noqa: BLE001 - the primary just committed; log and go on
            log.warning("could not take a new cache generation: %s", exc, extra={"dependency": "cache"})

    def _invalidate_local(self, key: CacheKey | None) -> None:
        if key is None:
            self._epoch += 1
            self.local.clear()
            self._versions.clear()
            return
        self.local.pop(key, None)
        self._versions[key] = self._versions.get(key, 0) + 1
        if len(self._versions) > 100_000:
            # Bound the bookkeeping: a new epoch rejects every fill in flight, so forgetting
            # the versions is safe (the memory layer's entries stay valid).
            self._epoch += 1
            self._versions.clear()

    # --- invalidation listener -------------------------------------------------------------------

    def _set_subscribed(self, value: bool) -> None:
        self.subscribed = value
        self._update_local()

    async def _listen(self) -> None:
        backoff = 0.1
        while not self._closing:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(INVALIDATION_CHANNEL)
                idle = 0
                while not self._closing:
                    message: dict[str, Any] | None = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        idle += 1
                        if idle % 5 == 0:
                            await pubsub.ping()  # detect a half-open connection
                        continue
                    kind = message.get("type")
                    if kind == "subscribe":
                        self._invalidate_local(None)
                        self._set_subscribed(True)
                        backoff = 0.1
                    elif kind == "message":
                        data = message.get("data")
                        if data == _FLUSH_ALL:
                            self._invalidate_local(None)
                        elif isinstance(data, bytes | str):
                            try:
                                text = data.decode() if isinstance(data, bytes) else data
                                self._invalidate_local(parse_key(text))
                            except ValueError:
                                self._invalidate_local(None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: drop the memory layer and retry
                if self.subscribed:
                    log.warning("cache invalidation channel lost, memory layer disabled: %s", exc)
                self._set_subscribed(False)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                self._set_subscribed(False)
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                except Exception:  # noqa: BLE001, S110 - closing a broken connection
                    pass


class ResourceCache:
    """One resource's view of the shared ``Cache``: keys are ``(name, owner, id)``.

    ``get`` runs in the route, after the route's dependencies: pass the authenticated owner,
    and a loader that reads the item *of that owner* (it must return None for anyone else's).
    """

    def __init__(self, cache: Cache, name: str) -> None:
        self.cache = cache
        self.name = name
        self.counters = cache.metrics.cache_counters(name)

    async def get(self, owner: int, item_id: int, load: Loader) -> bytes | None:
        """The item's JSON bytes, or None when it does not exist for this owner."""
        body = await self.cache.get((self.name, owner, item_id), load, self.counters)
        return None if body is None or body == TOMBSTONE else body

    async def written(self, owner: int, item_id: int, body: bytes | None, *, created: bool = False) -> None:
        """After a committed write: the new bytes (None: deleted) replace every cached copy."""
        await self.cache.written((self.name, owner, item_id), body, created=created)
