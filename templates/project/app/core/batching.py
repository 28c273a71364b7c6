"""Micro-batching of reads by key (the DataLoader pattern), for any resource.

Every cache miss asks the loader; all requests that ask within the same event-loop iteration
are answered by one ``fetch_many`` (one ``SELECT ... WHERE id = ANY(...)``) on one pooled
connection. Under load this turns N pool checkouts and N round trips into one; with a single
request in flight it costs one extra loop iteration (microseconds). Duplicate keys in a batch
are read once, so it also collapses concurrent misses of a hot key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from psycopg import AsyncConnection

log = logging.getLogger(__name__)

Conn = AsyncConnection[tuple[Any, ...]]
K = TypeVar("K", bound=Hashable)
# Reads every key it is given that exists; keys absent from the result do not exist.
FetchMany = Callable[[Conn, list[K]], Awaitable[dict[K, bytes]]]
# Runs a read on a pooled connection (``Database.read``: a healthy standby, else the primary).
RunRead = Callable[[Callable[[Conn], Awaitable[dict[K, bytes]]]], Awaitable[dict[K, bytes]]]


class BatchLoader(Generic[K]):
    def __init__(self, run: RunRead[K], fetch_many: FetchMany[K], max_batch: int = 256) -> None:
        self.run = run
        self.fetch_many = fetch_many
        self.max_batch = max_batch
        self._pending: dict[K, list[asyncio.Future[bytes | None]]] = {}
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.loaded = 0

    async def load(self, key: K) -> bytes | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | None] = loop.create_future()
        waiters = self._pending.get(key)
        if waiters is None:
            self._pending[key] = [future]
        else:
            waiters.append(future)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._dispatch)
        return await future

    def _dispatch(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        keys = list(pending)
        for start in range(0, len(keys), self.max_batch):
            chunk = {k: pending[k] for k in keys[start : start + self.max_batch]}
            task = asyncio.get_running_loop().create_task(self._run(chunk))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: dict[K, list[asyncio.Future[bytes | None]]]) -> None:
        keys = list(batch)
        try:
            found = await self.run(lambda conn: self.fetch_many(conn, keys))
        except BaseException as exc:
            for waiters in batch.values():
                for future in waiters:
                    if not future.done():
                        future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self.batches += 1
        self.loaded += len(batch)
        for key, waiters in batch.items():
            body = found.get(key)
            for future in waiters:
                if not future.done():
                    future.set_result(body)
