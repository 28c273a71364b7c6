"""Fixed-window rate limiting per key, shared by every replica through Redis.

The key is the authenticated user (``user:<id>``) when the route has one, else the client
address (``client:<ip>``) as uvicorn resolved it from a trusted proxy's X-Forwarded-For (see
app/api/deps.py): a client cannot choose its bucket.
"""

from __future__ import annotations

import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from app.core.cache import RedisCircuit

log = logging.getLogger(__name__)

# INCR + EXPIRE atomically; returns the count in this window and the seconds left in it.
_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('TTL', KEYS[1])
return {count, ttl}
"""


class RateLimiter:
    def __init__(self, redis: aioredis.Redis, per_minute: int, window_seconds: int = 60) -> None:
        self.redis = redis
        self.limit = per_minute
        self.window = window_seconds
        self._script = redis.register_script(_SCRIPT)
        self.circuit = RedisCircuit("rate-limiter")

    async def check(self, key: str) -> int | None:
        """None if the request may proceed, else the Retry-After seconds.

        Fails open: when Redis is unavailable requests are not limited (logged once per outage).
        """
        if not self.circuit.available:
            return None
        window = int(time.time()) // self.window
        try:
            count, ttl = await self._script(keys=[f"ratelimit:{key}:{window}"], args=[self.window])
            self.circuit.success()
        except (RedisError, OSError) as exc:
            self.circuit.failure(exc)
            return None
        if int(count) > self.limit:
            return max(int(ttl), 1)
        return None
