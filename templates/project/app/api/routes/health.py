"""Liveness, readiness and metrics (no authentication: probes and Prometheus call them).

``/metrics`` is for Prometheus scraping a replica directly. It answers 404 to anything that came
through the load balancer (nginx and the ingress set X-Forwarded-For, overwriting what a client
sent), so the public port never serves it; the nginx configs also refuse it themselves.
"""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import ServicesDep
from app.api.errors import json_response
from app.crud.tasks import OUTBOX_BACKLOG

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers. No I/O."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(services: ServicesDep, response: Response) -> dict[str, object]:
    """Readiness: database, cache and broker reachability. 503 when any is down."""
    db_ok, cache_ok, broker_ok = await asyncio.gather(services.db.ping(), services.cache.ping(), services.broker.ping())
    checks = {
        "database": "ok" if db_ok else "down",
        "cache": "ok" if cache_ok else "down",
        "broker": "ok" if broker_ok else "down",
    }
    ready = db_ok and cache_ok and broker_ok
    response.status_code = 200 if ready else 503
    return {"status": "ok" if ready else "unavailable", "instance": services.settings.instance_id, "checks": checks}


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, services: ServicesDep) -> Response:
    if "x-forwarded-for" in request.headers:
        return json_response(404, {"detail": "Not Found"})
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
                cur = await conn.execute(OUTBOX_BACKLOG)
                row = await cur.fetchone()
                return int(str(row[0])) if row else 0

        m.outbox_backlog.set(await asyncio.wait_for(backlog(), 2.0))
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
