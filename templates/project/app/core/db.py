"""PostgreSQL connection pools (psycopg 3 async pool): one primary, optional read replicas, and
the health monitor that decides where reads and writes go.

The request path executes SQL compiled once from SQLAlchemy Core statements (see app/core/sql.py) on
psycopg's async pool. Measured on the reference machine, SQLAlchemy's AsyncConnection adds about
2.5x CPU per query on top of the driver (greenlet hops, result processing), which is the whole
budget of an uncached GET, so the hot paths talk to the driver directly. SQLAlchemy owns the
schema (app/models.py) and Alembic's migrations.

Routing (``NodeMonitor``, one dedicated connection per node, a check every
``DB_HEALTH_INTERVAL_SECONDS``):
  * Writes go to the primary. While it does not answer, ``db.primary.connection()`` fails at once
    with ``DatabaseUnavailable`` (a 503 with ``Retry-After``) instead of waiting for the pool's
    timeout. When the primary is gone and a listed standby answers as a read-write server (it was
    promoted), writes follow it: no restart needed. The configured primary is not taken back
    after that, even if it comes back (it must be rejoined as a standby first).
  * Reads (``db.read(...)``) go round-robin to the standbys that answer and whose replay lag is
    under ``REPLICA_MAX_LAG_SECONDS``, else to the primary. A read that fails on a standby (it
    died since the last check) takes it out of the rotation and is retried once on the primary:
    a dead standby costs latency, not a failed request.
  * Lag is measured in time without trusting clocks or timestamps: the monitor samples the
    primary's WAL position at each check; a standby's lag is how long ago the primary was at a
    position the standby has not replayed yet (0 once it replayed everything sampled).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from app.core.batching import BatchLoader, FetchMany
from app.core.config import Settings, libpq_url

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
Conn = AsyncConnection[tuple[Any, ...]]
Work = Callable[[Conn], Awaitable[T]]

log = logging.getLogger(__name__)

# One round trip per node and check: its role, its WAL position (written on a primary, replayed on
# a standby) and the cache generation (app/core/cache.py; NULL before migrations created it).
_CHECK = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END
           - '0/0'::pg_lsn,
       coalesce(pg_sequence_last_value(to_regclass('cache_generation')), 0)
"""
# A read on a standby that fails with one of these is retried on the primary.
STANDBY_FAILURES = (psycopg.OperationalError, psycopg.errors.SerializationFailure, PoolTimeout, TimeoutError, OSError)
# ... and these are the statement's own fault (a timeout, a conflict with recovery), not the node's.
_STATEMENT_FAILURES = (psycopg.errors.QueryCanceled, psycopg.errors.SerializationFailure)


class DatabaseUnavailable(psycopg.OperationalError):
    """The server a request needs is known to be down: answered 503 at once (app/api/errors.py)."""


@dataclass
class Node:
    """One PostgreSQL server as the monitor last saw it."""

    name: str
    url: str  # libpq form
    up: bool = False
    writable: bool = False
    lsn: int | None = None
    lag_seconds: float | None = None  # standbys: see the module docstring
    down_since: float | None = None
    last_error: str = ""
    reads: int = 0  # reads served (metrics)

    def failed(self, reason: str) -> None:
        if self.up or self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("database %s unreachable: %s", self.name, reason, extra={"dependency": f"db:{self.name}"})
        self.up = False
        self.last_error = reason

    def answered(self, writable: bool, lsn: int) -> None:
        if not self.up and self.down_since is not None:
            log.warning(
                "database %s reachable again after %.1fs",
                self.name,
                time.monotonic() - self.down_since,
                extra={"dependency": f"db:{self.name}"},
            )
        self.up, self.writable, self.lsn = True, writable, lsn
        self.down_since = None
        self.last_error = ""


class NodePool(AsyncConnectionPool[Conn]):
    """A pool that fails at once while its node is known to be down, and asks the monitor for a
    fresh check when it gets a broken connection back."""

    def __init__(self, node: Node, recheck: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.node = node
        self._recheck = recheck

    async def getconn(self, timeout: float | None = None) -> Conn:  # noqa: ASYNC109 - the pool's own signature
        if not self.node.up:
            raise DatabaseUnavailable(f"database {self.node.name} is unavailable")
        return await super().getconn(timeout)

    async def putconn(self, conn: Conn) -> None:
        if conn.broken:
            self._recheck()
        await super().putconn(conn)

    async def fail_waiting(self) -> None:
        """Answer every request waiting for a connection now that the node is known down
        (else each would wait for the pool's timeout). Uses the pool's waiting queue, as the
        pool itself does when it closes."""
        async with self._lock:
            waiting = list(self._waiting)
            self._waiting.clear()
        for client in waiting:
            await client.fail(DatabaseUnavailable(f"database {self.node.name} is unavailable"))


def _make_pool(
    conninfo: str | Callable[[], str], node: Node, recheck: Callable[[], None], settings: Settings
) -> NodePool:
    return NodePool(
        node,
        recheck,
        conninfo=conninfo,
        min_size=settings.db_pool_size,
        max_size=settings.db_pool_size + settings.db_max_overflow,
        timeout=settings.db_pool_timeout_seconds,
        name=node.name,
        open=False,
        kwargs={
            # Single statements autocommit (one round trip); multi-statement work opens an
            # explicit transaction with ``conn.transaction()``.
            "autocommit": True,
            "prepare_threshold": 1,
            "connect_timeout": settings.db_connect_timeout_seconds,
            "options": f"-c timezone=UTC -c statement_timeout={settings.db_statement_timeout_ms}",
        },
    )


@dataclass
class _LsnHistory:
    """(monotonic time, primary WAL position) samples of the last minute, oldest first."""

    times: deque[float] = field(default_factory=lambda: deque(maxlen=512))
    lsns: deque[int] = field(default_factory=lambda: deque(maxlen=512))

    def add(self, at: float, lsn: int) -> None:
        if self.lsns and lsn < self.lsns[-1]:  # a new primary on another timeline: start again
            self.times.clear()
            self.lsns.clear()
        self.times.append(at)
        self.lsns.append(lsn)

    def lag(self, replayed: int, now: float) -> float:
        """How long ago the primary was first seen past ``replayed`` (0: nothing missing)."""
        if not self.lsns or replayed >= self.lsns[-1]:
            return 0.0
        index = bisect.bisect_right(list(self.lsns), replayed)
        return now - self.times[index]


class Database:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.nodes = [Node("primary", libpq_url(settings.database_url))] + [
            Node(f"replica-{i}", libpq_url(url)) for i, url in enumerate(settings.replica_urls)
        ]
        self.writer = self.nodes[0]  # where writes go: the primary, or the standby promoted since
        self.writer.up = True  # optimistic until the first check: requests may try
        self.primary = _make_pool(lambda: self.writer.url, self.writer, self.recheck, settings)
        self.replicas = [_make_pool(n.url, n, self.recheck, settings) for n in self.nodes[1:]]
        self._readers: list[NodePool] = []  # healthy standbys, recomputed by every check
        self._next = 0
        self._loaders: dict[tuple[Any, bool], BatchLoader[Any]] = {}
        self._history = _LsnHistory()
        self._conns: dict[str, Conn] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._monitor: asyncio.Task[None] | None = None
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()
        self.cache_generation: int | None = None
        self.on_generation: Callable[[int], None] | None = None
        self.checks = 0

    @property
    def pools(self) -> list[NodePool]:
        return [self.primary, *self.replicas]

    async def open(self) -> None:
        # wait=False: the app starts (and /readyz reports) even while the database is still down.
        for pool in self.pools:
            await pool.open(wait=False)
        await self.check()  # routing is known before the first request
        self._monitor = asyncio.create_task(self._run(), name="database-monitor")

    async def close(self) -> None:
        self._closing = True
        if self._monitor is not None:
            # Python 3.11's wait_for can swallow a cancellation that lands as its inner wait
            # completes: the loop also checks _closing, and the wait is bounded.
            self._monitor.cancel()
            self._wake.set()
            await asyncio.wait({self._monitor}, timeout=5.0)
        if self._background:
            await asyncio.wait(self._background, timeout=5.0)
        for conn in self._conns.values():
            with suppress(Exception):
                await conn.close()
        self._conns.clear()
        for pool in self.pools:
            await pool.close(timeout=5)

    # --- reads --------------------------------------------------------------------------------

    def reader(self, primary: bool = False) -> NodePool:
        """Pool for a read: a healthy standby (round-robin) unless there is none or ``primary``
        is asked. Prefer ``read()``, which retries a read that fails on a standby."""
        readers = self._readers
        if primary or not readers:
            return self.primary
        self._next = (self._next + 1) % len(readers)
        return readers[self._next]

    async def read(self, work: Work[T], *, primary: bool = False) -> T:
        """Run ``work(conn)`` on a reader; a standby that fails is left out and the read is
        retried once on the primary."""
        pool = self.reader(primary)
        if pool is self.primary:
            self.writer.reads += 1
            async with pool.connection() as conn:
                return await work(conn)
        try:
            async with asyncio.timeout(self.settings.db_replica_timeout_seconds), pool.connection() as conn:
                result = await work(conn)
        except STANDBY_FAILURES as exc:
            if not isinstance(exc, _STATEMENT_FAILURES):
                self._standby_failed(pool, exc)
        else:
            pool.node.reads += 1
            return result
        self.writer.reads += 1
        async with self.primary.connection() as conn:
            return await work(conn)

    def loader(self, fetch_many: FetchMany[K], *, primary: bool = False) -> BatchLoader[K]:
        """The batching loader (app/core/batching.py) of ``fetch_many`` on the read pools, or on
        the primary with ``primary=True``: one per function and pool choice, made on first use."""
        key = (fetch_many, primary)
        loader = self._loaders.get(key)
        if loader is None:
            loader = self._loaders[key] = BatchLoader(lambda work: self.read(work, primary=primary), fetch_many)
        return loader

    # --- health -------------------------------------------------------------------------------

    @property
    def primary_up(self) -> bool:
        return self.writer.up

    @property
    def standbys(self) -> list[Node]:
        return [n for n in self.nodes if n is not self.writer]

    def usable(self, node: Node) -> bool:
        lag = node.lag_seconds
        return node.up and lag is not None and lag <= self.settings.replica_max_lag_seconds

    def recheck(self) -> None:
        """Check every node now rather than at the next interval (a broken connection came back)."""
        self._wake.set()

    def _standby_failed(self, pool: NodePool, exc: BaseException) -> None:
        pool.node.failed(str(exc) or type(exc).__name__)
        self._readers = [p for p in self._readers if p is not pool]
        self.recheck()

    async def ping(self, timeout: float = 2.0) -> bool:  # noqa: ASYNC109 - bounded by wait_for
        """A fresh check of the nodes; True when writes can go somewhere."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self.check(), timeout)
        return self.writer.up

    async def _run(self) -> None:
        interval = self.settings.db_health_interval_seconds
        while not self._closing:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            if self._closing:
                return
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # the monitor must never die: log, keep checking
                log.exception("database health check failed")

    async def _query(self, node: Node) -> tuple[bool, int, int]:
        timeout = self.settings.db_check_timeout_seconds
        conn = self._conns.get(node.name)
        try:
            if conn is None or conn.closed:
                conn = await asyncio.wait_for(
                    AsyncConnection.connect(node.url, autocommit=True, connect_timeout=max(2, int(timeout) + 1)),
                    timeout,
                )
                self._conns[node.name] = conn
            cur = await asyncio.wait_for(conn.execute(_CHECK), timeout)
            row = await cur.fetchone()
        except BaseException:
            self._conns.pop(node.name, None)
            if conn is not None:
                with suppress(Exception):
                    await conn.close()
            raise
        assert row is not None
        return bool(row[0]), int(row[1] or 0), int(row[2] or 0)

    async def _check_node(self, node: Node) -> tuple[bool, int, int] | None:
        reused = node.name in self._conns
        stale = node.down_since is not None  # connections pooled before an outage are dead
        try:
            try:
                result = await self._query(node)
            except psycopg.OperationalError:
                if not reused:
                    raise
                # The monitor's own connection died: the server restarted since the last check.
                # It answers on a new connection, and the pool's connections are dead too.
                stale = True
                result = await self._query(node)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure: the node is down
            node.failed(str(exc).strip() or type(exc).__name__)
            return None
        in_recovery, lsn, _generation = result
        node.answered(not in_recovery, lsn)
        if stale:
            self._renew(node)
        return result

    def _renew(self, node: Node) -> None:
        """Replace the pooled connections of ``node`` (in the background): after a restart
        every one of them is broken, and each would cost a request a 503."""
        for pool in self.pools:
            if pool.node is node and not pool.closed:
                task = asyncio.get_running_loop().create_task(pool.drain())
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def check(self) -> None:
        """One round: the writer first (its WAL position is the reference), then the others."""
        async with self._lock:
            await self._check()

    async def _check(self) -> None:
        self.checks += 1
        writer = self.writer
        was_up = writer.up
        result = await self._check_node(writer)
        now = time.monotonic()
        if result is not None and not result[0]:
            self._history.add(now, result[1])
            self._generation(result[2])
        elif result is not None:
            writer.failed("it is a standby (read-only), not a primary")
        others = [n for n in self.nodes if n is not writer]
        results = await asyncio.gather(*(self._check_node(n) for n in others))
        if not writer.up:
            promoted = [(n, r) for n, r in zip(others, results, strict=True) if r is not None and not r[0]]
            if promoted:
                self._follow(promoted[0][0])
                self._history.add(now, promoted[0][1][1])
                self._generation(promoted[0][1][2])
        for node in self.nodes:
            node.lag_seconds = self._history.lag(node.lsn, now) if node.up and node.lsn is not None else None
        self._readers = [p for p in self.replicas if p.node is not self.writer and self.usable(p.node)]
        if was_up and not self.writer.up:
            await self.primary.fail_waiting()

    def _follow(self, node: Node) -> None:
        old = self.writer
        log.warning(
            "primary %s unreachable and %s answers as a primary: writes now go to %s",
            old.name,
            node.name,
            node.name,
            extra={"dependency": "db:primary"},
        )
        self.writer = node
        self.primary.node = node
        # Idle connections to the old primary are dead anyway: close them, open new ones.
        self._renew(node)

    def _generation(self, value: int) -> None:
        if value != self.cache_generation:
            self.cache_generation = value
            if self.on_generation is not None:
                self.on_generation(value)

    async def bump_cache_generation(self) -> int:
        """A new cache generation (see app/core/cache.py), from the primary; raises when the
        primary does not answer."""
        async with self.primary.connection() as conn:
            cur = await conn.execute("SELECT nextval('cache_generation')")
            row = await cur.fetchone()
        assert row is not None
        value = int(row[0])
        self._generation(value)
        return value

    async def read_cache_generation(self) -> int:
        async with self.primary.connection() as conn:
            cur = await conn.execute("SELECT coalesce(pg_sequence_last_value(to_regclass('cache_generation')), 0)")
            row = await cur.fetchone()
        assert row is not None
        value = int(row[0] or 0)
        self._generation(value)
        return value

    def routing(self) -> dict[str, Any]:
        """What /readyz shows about the database."""
        standbys = [
            {
                "name": n.name,
                "state": "ok" if self.usable(n) else ("lagging" if n.up else "down"),
                "lag_seconds": None if n.lag_seconds is None else round(n.lag_seconds, 3),
            }
            for n in self.standbys
        ]
        return {"primary": self.writer.name, "standbys": standbys}
