"""Liveness, readiness and metrics."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import crud
from app.api.deps import Services

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers. No I/O."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, response: Response) -> dict[str, object]:
    """Readiness: database, cache and broker reachability. 503 when any is down."""
    services: Services = request.app.state.services
    db_ok, cache_ok, broker_ok = await asyncio.gather(
        services.db.ping(), services.cache.ping(), services.broker.ping()
    )
    checks = {
        "database": "ok" if db_ok else "down",
        "cache": "ok" if cache_ok else "down",
        "broker": "ok" if broker_ok else "down",
    }
    ready = db_ok and cache_ok and broker_ok
    response.status_code = 200 if ready else 503
    return {"status": "ok" if ready else "unavailable", "instance": services.settings.instance_id, "checks": checks}


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    services: Services = request.app.state.services
    m = services.metrics
    for pool in services.db.pools:
        stats = pool.get_stats()
        size = stats.get("pool_size", 0)
        m.pool_size.labels(pool.name).set(size)
        m.pool_in_use.labels(pool.name).set(size - stats.get("pool_available", 0))
        m.pool_max.labels(pool.name).set(pool.max_size)
        m.pool_waiting.labels(pool.name).set(stats.get("requests_waiting", 0))
    with contextlib.suppress(Exception):

        async def backlog() -> int:
            async with services.db.primary.connection(timeout=1.0) as conn:
                cur = await conn.execute(crud.OUTBOX_BACKLOG)
                row = await cur.fetchone()
                return int(str(row[0])) if row else 0

        m.outbox_backlog.set(await asyncio.wait_for(backlog(), 2.0))
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
