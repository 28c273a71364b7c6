"""PostgreSQL connection pools (psycopg 3 async pool): one primary, optional read replicas.

The request path executes SQL compiled once from SQLAlchemy Core statements (see app/core/sql.py) on
psycopg's async pool. Measured on the reference machine, SQLAlchemy's AsyncConnection adds about
2.5x CPU per query on top of the driver (greenlet hops, result processing), which is the whole
budget of an uncached GET, so the hot paths talk to the driver directly. SQLAlchemy owns the
schema (app/models.py) and Alembic's migrations.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Hashable
from typing import Any, TypeVar

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from app.core.batching import BatchLoader, FetchMany
from app.core.config import Settings, libpq_url

K = TypeVar("K", bound=Hashable)

log = logging.getLogger(__name__)


def _make_pool(url: str, settings: Settings, name: str) -> AsyncConnectionPool[AsyncConnection[tuple[object, ...]]]:
    return AsyncConnectionPool(
        libpq_url(url),
        min_size=settings.db_pool_size,
        max_size=settings.db_pool_size + settings.db_max_overflow,
        timeout=settings.db_pool_timeout_seconds,
        name=name,
        open=False,
        kwargs={
            # Single statements autocommit (one round trip); multi-statement work opens an
            # explicit transaction with ``conn.transaction()``.
            "autocommit": True,
            "prepare_threshold": 1,
            "connect_timeout": 5,
            "options": f"-c timezone=UTC -c statement_timeout={settings.db_statement_timeout_ms}",
        },
    )


class Database:
    def __init__(self, settings: Settings) -> None:
        self.primary = _make_pool(settings.database_url, settings, "primary")
        self.replicas = [_make_pool(u, settings, f"replica-{i}") for i, u in enumerate(settings.replica_urls)]
        self._next_replica = itertools.cycle(self.replicas) if self.replicas else None
        self._loaders: dict[tuple[Any, bool], BatchLoader[Any]] = {}

    @property
    def pools(self) -> list[AsyncConnectionPool[AsyncConnection[tuple[object, ...]]]]:
        return [self.primary, *self.replicas]

    async def open(self) -> None:
        # wait=False: the app starts (and /readyz reports) even while the database is still down.
        for pool in self.pools:
            await pool.open(wait=False)

    async def close(self) -> None:
        for pool in self.pools:
            await pool.close(timeout=5)

    def reader(self, primary: bool = False) -> AsyncConnectionPool[AsyncConnection[tuple[object, ...]]]:
        """Pool for a read: a replica (round-robin) unless there is none or ``primary`` is asked."""
        if primary or self._next_replica is None:
            return self.primary
        return next(self._next_replica)

    def loader(self, fetch_many: FetchMany[K], *, primary: bool = False) -> BatchLoader[K]:
        """The batching loader (app/core/batching.py) of ``fetch_many`` on the read pools, or on
        the primary with ``primary=True``: one per function and pool choice, made on first use."""
        key = (fetch_many, primary)
        loader = self._loaders.get(key)
        if loader is None:
            loader = self._loaders[key] = BatchLoader(lambda: self.reader(primary), fetch_many)
        return loader

    async def ping(self, timeout: float = 2.0) -> bool:  # noqa: ASYNC109 - bounded by wait_for
        async def _check() -> None:
            async with self.primary.connection(timeout=timeout) as conn:
                await conn.execute("SELECT 1")

        try:
            await asyncio.wait_for(_check(), timeout)
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False
        return True
