"""One app replica's or the worker's HTTP side, from a generated project's own code, for the
telemetry tests.

``python replica_app.py PROJECT_ROOT PORT INSTANCE_ID`` serves, under uvicorn on loopback, the
project's real ``/metrics`` route (app/api/routes/health.py: its X-Forwarded-For rule, the
gauges it refreshes) behind its real ObservabilityMiddleware and Metrics, plus ``GET
/tasks/{task_id}`` answering 200 and counting one cache hit (the project's cache counters), so
requests sent to it move ``http_requests_total`` as load does. Nothing else of the app runs:
the services the route reads are small stand-ins (no PostgreSQL, Redis or broker here; the
outbox query fails and the route leaves that gauge alone, as it does when the database is
slow), with one pool whose statistics say 3 connections are in use.

``python replica_app.py PROJECT_ROOT PORT worker`` serves the worker's real ``/metrics``
(app/worker.py's WorkerState on its own small HTTP server) over stand-ins that say: 5 events
handled more at every scrape, a consumer lag of 7, nothing waiting in the outbox.
"""

from __future__ import annotations

import sys
from importlib import import_module
from types import SimpleNamespace
from typing import Any


class _Pool:
    name = "primary"
    max_size = 10

    def get_stats(self) -> dict[str, int]:
        return {"pool_size": 4, "pool_available": 1, "requests_waiting": 0}


class _Database:
    pools = (_Pool(),)
    primary = None  # outbox_stats fails on it: the route suppresses that
    primary_up = True

    def routing(self) -> dict[str, Any]:
        return {"standbys": []}


class _Answers:
    enabled = False

    async def check(self) -> bool:
        return True

    async def ping(self) -> bool:
        return True


def build(instance_id: str) -> Any:
    from fastapi import FastAPI

    health = import_module("app.api.routes.health")
    metrics = import_module("app.core.metrics").Metrics()
    middleware = import_module("app.core.middleware").ObservabilityMiddleware
    hits = metrics.cache_counters("tasks")
    app = FastAPI()
    app.include_router(health.router)

    @app.get("/tasks/{task_id}")
    async def get_task(task_id: int) -> dict[str, int]:
        hits.hit_local.inc()
        return {"id": task_id}

    app.state.services = SimpleNamespace(
        metrics=metrics,
        db=_Database(),
        cache=_Answers(),
        broker=_Answers(),
        settings=SimpleNamespace(instance_id=instance_id),
    )
    app.add_middleware(middleware, instance_id=instance_id, metrics=metrics)
    return app


class _Handler:
    duplicates = 0

    def __init__(self) -> None:
        self._handled = 0

    @property
    def handled(self) -> int:
        self._handled += 5
        return self._handled


class _Consumer:
    def __init__(self) -> None:
        self.stats = import_module("app.core.events").ConsumerStats(lag=7)

    async def refresh_lag(self) -> None:
        return None


async def serve_worker(port: int) -> None:
    import asyncio

    relay = SimpleNamespace(published=0, leader=True)
    state = import_module("app.worker").WorkerState(_Database(), relay, _Consumer(), _Handler())
    serve = import_module("app.core.httpserver").serve
    await serve("127.0.0.1", port, {"/metrics": state.metrics})
    await asyncio.Event().wait()


def main() -> None:
    root, port, instance_id = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    sys.path.insert(0, root)
    if instance_id == "worker":
        import asyncio

        asyncio.run(serve_worker(port))
        return
    import uvicorn

    uvicorn.run(build(instance_id), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
