"""The per-process services the routes use: built by create_app, started in its lifespan."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from app.core.cache import TaskCache
from app.core.config import Settings
from app.core.db import Database
from app.core.events import Broker
from app.core.metrics import Metrics
from app.core.ratelimit import RateLimiter
from app.loader import TaskLoader

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    db: Database
    cache: TaskCache
    metrics: Metrics
    broker: Broker
    rate_limiter: RateLimiter | None
    # Batched reads by id: one for the read pools (replicas when configured), one for the primary.
    read_loader: TaskLoader = field(init=False)
    primary_loader: TaskLoader = field(init=False)

    def __post_init__(self) -> None:
        self.read_loader = TaskLoader(self.db.reader)
        self.primary_loader = TaskLoader(lambda: self.db.primary)

    async def start(self) -> None:
        await self.db.open()
        await self.cache.start()
        await self.broker.start()

    async def close(self) -> None:
        await self.broker.close()
        await self.cache.close()
        await self.db.close()
