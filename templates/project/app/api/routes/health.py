"""Liveness, readiness and metrics (no authentication: probes and Prometheus call them).

Three states (the README's "Health" section):
  * live (``/healthz`` 200): the process serves. No I/O; a failure means restart it.
  * ready (``/readyz`` 200): this replica can answer correctly now: the primary takes writes,
    and reads have a healthy standby or the primary. 503 otherwise (the load balancer should
    send requests elsewhere; there is nothing a restart would fix).
  * degraded (``/readyz`` 200, ``"status": "degraded"``): ready, with parts missing that requests
    can do without: Redis (the cache is bypassed, reads go to the database), the broker (events
    wait in the outbox), a standby (reads go to the others or the primary). ``degraded`` names
    them and ``/metrics`` has them (``dependency_up``, ``app_degraded``).

Every check is bounded well under the probes' timeouts: the database state comes from the health
monitor (app/core/db.py, no I/O here), Redis and the broker are pinged with a short timeout.

``/metrics`` is for Prometheus scraping a replica directly. It answers 404 to anything that came
through the load balancer (nginx and the ingress set X-Forwarded-For, overwriting what a client
sent), so the public port never serves it; the nginx configs also refuse it themselves.
``/metrics?name[]=SERIES`` (repeatable) returns only those series and does only the work they
need: the dependency pings for ``dependency_up`` / ``app_degraded``, the outbox query for the
outbox gauges. taskscale's telemetry scrapes every replica each second that way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import Services, ServicesDep
from app.api.errors import json_response
from app.core.metrics import exposition
from app.outbox import outbox_stats

router = APIRouter(tags=["operations"])

# Redis and the broker get this long to answer a probe (the probes' own timeouts are longer).
PING_TIMEOUT = 0.5


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers. No I/O."""
    return {"status": "ok"}


async def _bounded(check: Awaitable[bool]) -> bool:
    try:
        return await asyncio.wait_for(check, PING_TIMEOUT)
    except Exception:  # noqa: BLE001 - any failure means "not answering"
        return False


async def health_report(services: Services) -> tuple[bool, dict[str, object]]:
    """(ready, body) for /readyz; refreshes the dependency gauges of /metrics on the way."""
    db, cache = services.db, services.cache
    cache_ok, broker_ok = await asyncio.gather(_bounded(cache.check()), _bounded(services.broker.ping()))
    routing = db.routing()
    standbys = routing["standbys"]
    assert isinstance(standbys, list)
    checks: dict[str, str] = {"database": "ok" if db.primary_up else "down"}
    if standbys:
        usable = sum(1 for s in standbys if s["state"] == "ok")
        checks["replicas"] = "ok" if usable == len(standbys) else f"{usable} of {len(standbys)} usable"
    checks["cache"] = "disabled" if not cache.enabled else ("ok" if cache_ok else "down")
    checks["broker"] = "ok" if broker_ok else "down"
    degraded = [name for name in ("replicas", "cache", "broker") if checks.get(name, "ok") not in ("ok", "disabled")]
    ready = db.primary_up
    status = "unavailable" if not ready else ("degraded" if degraded else "ok")
    m = services.metrics
    m.dependency_up.labels("database").set(1 if db.primary_up else 0)
    m.dependency_up.labels("cache").set(1 if cache_ok else 0)
    m.dependency_up.labels("broker").set(1 if broker_ok else 0)
    m.degraded.set(1 if degraded else 0)
    body: dict[str, object] = {
        "status": status,
        "instance": services.settings.instance_id,
        "checks": checks,
        "degraded": degraded,
        "database": routing,
    }
    return ready, body


@router.get("/readyz")
async def readyz(services: ServicesDep, response: Response) -> dict[str, object]:
    """Readiness: 200 ``ok`` or ``degraded`` (Redis, the broker or a standby missing: requests
    still succeed), 503 ``unavailable`` when the primary does not answer."""
    ready, body = await health_report(services)
    response.status_code = 200 if ready else 503
    return body


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, services: ServicesDep) -> Response:
    if "x-forwarded-for" in request.headers:
        return json_response(404, {"detail": "Not Found"})
    names = request.query_params.getlist("name[]")

    def asked(*series: str) -> bool:
        return not names or any(name in names for name in series)

    m = services.metrics
    m.observe_pools(services.db)  # no I/O
    if asked("dependency_up", "app_degraded"):
        await health_report(services)
    if asked("outbox_backlog", "outbox_oldest_unpublished_age_seconds"):
        with contextlib.suppress(Exception):
            stats = await asyncio.wait_for(outbox_stats(services.db), 2.0)
            m.outbox_backlog.set(stats.backlog)
            m.outbox_oldest_age.set(stats.oldest_age_seconds)
    return Response(exposition(m.registry, names), media_type=CONTENT_TYPE_LATEST)
