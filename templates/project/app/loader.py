"""Micro-batching of task reads by id (the DataLoader pattern).

Every ``GET /tasks/{id}`` that misses the cache asks the loader; all requests that ask within
the same event-loop iteration are answered by one ``SELECT ... WHERE id = ANY(...)`` on one
pooled connection. Under load this turns N pool checkouts and N round trips into one; with a
single request in flight it costs one extra loop iteration (microseconds). Duplicate ids in a
batch are read once, so it also collapses concurrent misses of a hot key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from app import crud

log = logging.getLogger(__name__)

Pool = AsyncConnectionPool[AsyncConnection[tuple[Any, ...]]]


class TaskLoader:
    def __init__(self, choose_pool: Callable[[], Pool], max_batch: int = 256) -> None:
        self.choose_pool = choose_pool
        self.max_batch = max_batch
        self._pending: dict[int, list[asyncio.Future[bytes | None]]] = {}
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.loaded = 0

    async def load(self, task_id: int) -> bytes | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | None] = loop.create_future()
        waiters = self._pending.get(task_id)
        if waiters is None:
            self._pending[task_id] = [future]
        else:
            waiters.append(future)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._dispatch)
        return await future

    def _dispatch(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        ids = list(pending)
        for start in range(0, len(ids), self.max_batch):
            chunk = {i: pending[i] for i in ids[start : start + self.max_batch]}
            task = asyncio.get_running_loop().create_task(self._run(chunk))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: dict[int, list[asyncio.Future[bytes | None]]]) -> None:
        try:
            async with self.choose_pool().connection() as conn:
                if len(batch) == 1:
                    task_id = next(iter(batch))
                    body = await crud.get_task_json(conn, task_id)
                    found = {} if body is None else {task_id: body}
                else:
                    found = await crud.get_tasks_json(conn, list(batch))
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
        for task_id, waiters in batch.items():
            body = found.get(task_id)
            for future in waiters:
                if not future.done():
                    future.set_result(body)
