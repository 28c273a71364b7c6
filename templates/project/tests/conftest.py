"""Fixtures: a real PostgreSQL and Redis for the whole session, and app instances.

When DATABASE_URL and REDIS_URL are both set the suite uses those servers (CI service
containers, a running ``taskscale up``); otherwise it starts throwaway ones (tests/services.py).
Tests that stop Redis start their own private Redis so they never disturb the shared one.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import psycopg
import pytest
from alembic import command
from alembic.config import Config
from fastapi import FastAPI

from app.core.config import Settings, libpq_url
from app.main import create_app
from tests.services import temporary_services

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def service_urls() -> Iterator[tuple[str, str]]:
    database_url = os.environ.get("DATABASE_URL")
    redis_url = os.environ.get("REDIS_URL")
    if database_url and redis_url:
        yield database_url, redis_url
        return
    # A SIGTERM (CI cancel, timeout) would kill pytest without running finalizers and leave
    # PostgreSQL and Redis behind: turn it into KeyboardInterrupt so the servers are stopped.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with temporary_services() as (pg, redis_server):
            yield pg.url, redis_server.url
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def alembic_config(database_url: str) -> Config:
    config = Config(os.path.join(PROJECT_ROOT, "alembic.ini"))
    config.attributes["database_url"] = Settings(database_url=database_url).database_url
    config.attributes["configure_logging"] = False
    return config


@pytest.fixture(scope="session")
def database_url(service_urls: tuple[str, str]) -> str:
    url = service_urls[0]
    command.upgrade(alembic_config(url), "head")
    return url


@pytest.fixture(scope="session")
def redis_url(service_urls: tuple[str, str]) -> str:
    return service_urls[1]


@pytest.fixture(autouse=True)
def clean_state(request: pytest.FixtureRequest) -> None:
    """Empty tables and the shared Redis before every test that uses them."""
    if "database_url" not in request.fixturenames:
        return
    database_url: str = request.getfixturevalue("database_url")
    redis_url: str = request.getfixturevalue("redis_url")
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute("TRUNCATE tasks, outbox, idempotency_keys, notifications RESTART IDENTITY")
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()


AppFactory = Callable[..., Awaitable[FastAPI]]


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0, what: str = "condition"
) -> None:
    """Poll ``check`` (sync or async) every 10 ms until it is true; AssertionError naming
    ``what`` when it is still false after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: still false after {timeout:g}s")
        await asyncio.sleep(0.01)


@pytest.fixture
async def make_app(database_url: str, redis_url: str) -> AsyncIterator[AppFactory]:
    """Build and start apps (lifespan included); all are shut down after the test."""
    async with AsyncExitStack() as stack:

        async def factory(**overrides: Any) -> FastAPI:
            values: dict[str, Any] = {
                "database_url": database_url,
                "redis_url": redis_url,
                "broker": "redis",
                "instance_id": "test-instance",
                "db_pool_size": 2,
                "db_max_overflow": 4,
                "log_level": "WARNING",
            }
            values.update(overrides)
            app = create_app(Settings(**values))
            await stack.enter_async_context(app.router.lifespan_context(app))
            return app

        yield factory


def client_for(app: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
async def app(make_app: AppFactory) -> FastAPI:
    return await make_app()


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as c:
        yield c
