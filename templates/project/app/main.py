"""ASGI application: ``uvicorn app.main:app``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import psycopg
import psycopg_pool
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.deps import Services
from app.api.fastpath import CachedTaskFastPath
from app.api.routes import health, tasks
from app.core.cache import TaskCache
from app.core.config import Settings, get_settings
from app.core.db import Database
from app.core.events import make_broker
from app.core.logging import configure_logging
from app.core.metrics import Metrics
from app.core.middleware import ObservabilityMiddleware
from app.core.ratelimit import RateLimiter

log = logging.getLogger("app")


def _json(status: int, content: Any, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps(content, default=str)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # Echo location, message and type only: the offending input can be huge or not JSON-safe.
    errors = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]
    return _json(422, {"detail": errors})


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return _json(exc.status_code, {"detail": exc.detail}, dict(exc.headers or {}))


async def _database_unavailable(_request: Request, exc: Exception) -> Response:
    log.warning("database unavailable: %s", exc)
    return _json(503, {"detail": "Database unavailable"}, {"Retry-After": "1"})


async def _data_error(_request: Request, exc: Exception) -> Response:
    # Input that passed validation but the database still refused (should not happen).
    log.warning("database rejected input: %s", exc)
    return _json(422, {"detail": "Invalid value"})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.instance_id, settings.access_log)
    metrics = Metrics()
    cache = TaskCache(
        settings.redis_url,
        ttl_seconds=settings.cache_ttl_seconds,
        local_max_entries=settings.cache_local_max_entries,
        local_ttl_seconds=settings.cache_local_ttl_seconds,
        metrics=metrics,
        enabled=settings.cache_enabled,
    )
    rate_limiter = RateLimiter(cache.redis, settings.rate_limit_per_minute) if settings.rate_limit_enabled else None
    services = Services(
        settings=settings,
        db=Database(settings),
        cache=cache,
        metrics=metrics,
        broker=make_broker(settings),
        rate_limiter=rate_limiter,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.start()
        log.info("started", extra={"broker": settings.broker, "replicas": len(settings.replica_urls)})
        try:
            yield
        finally:
            # uvicorn has stopped accepting and finished in-flight requests by now.
            await services.close()
            log.info("stopped")

    app = FastAPI(
        title="Task Management API",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.services = services
    app.include_router(tasks.router)
    app.include_router(health.router)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(psycopg_pool.PoolTimeout, _database_unavailable)
    app.add_exception_handler(psycopg.OperationalError, _database_unavailable)
    app.add_exception_handler(psycopg.DataError, _data_error)
    # Starlette wraps in reverse order of addition: the fast path runs inside observability.
    app.add_middleware(CachedTaskFastPath, services=services)
    app.add_middleware(
        ObservabilityMiddleware, instance_id=settings.instance_id, metrics=metrics, rate_limiter=rate_limiter
    )
    return app


app = create_app()
