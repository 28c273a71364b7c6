"""Health, readiness, metrics, rate limiting and idempotent POST."""

from __future__ import annotations

import asyncio

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from app.core.config import libpq_url
from tests.conftest import AppFactory, anonymous_client, auth_headers, client_for
from tests.services import free_port

pytestmark = pytest.mark.anyio


async def test_healthz_and_readyz(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "cache": "ok", "broker": "ok"}


async def test_readyz_reports_a_dead_database(make_app: AppFactory) -> None:
    dead = f"postgresql://nobody:x@127.0.0.1:{free_port()}/none"
    app = await make_app(database_url=dead, db_pool_timeout_seconds=0.5)
    async with anonymous_client(app) as client:
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["checks"]["database"] == "down"
        assert (await client.get("/healthz")).status_code == 200
        # A token is verified without the database: the request gets as far as the query.
        response = await client.get("/tasks/1", headers=auth_headers(1))
        assert response.status_code == 503
        assert response.json() == {"detail": "Database unavailable"}


async def test_metrics(client: httpx.AsyncClient) -> None:
    task = (await client.post("/tasks/", json={"title": "m"})).json()
    for _ in range(3):
        await client.get(f"/tasks/{task['id']}")
    await client.get("/tasks/999999")
    text = (await client.get("/metrics")).text
    assert 'http_requests_total{method="GET",route="/tasks/{task_id}",status="200"} 3.0' in text
    assert 'route="/tasks/{task_id}",status="404"' in text
    assert 'http_request_duration_seconds_bucket{le="0.005",method="POST",route="/tasks/",status="201"}' in text
    assert 'cache_requests_total{resource="tasks",result="hit_redis"}' in text
    assert 'cache_requests_total{resource="tasks",result="hit_local"}' in text
    assert 'db_pool_connections_max{pool="primary"}' in text
    assert "db_pool_connections_in_use" in text
    assert "outbox_backlog 1.0" in text


async def test_metrics_by_name_returns_only_those_series(client: httpx.AsyncClient) -> None:
    await client.post("/tasks/", json={"title": "m"})
    params = {"name[]": ["http_requests_total", "db_reads_total"]}
    text = (await client.get("/metrics", params=params)).text
    series = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
    # db_reads_total comes from a collector whose series are known only at scrape time.
    assert series == {"http_requests_total", "db_reads_total"}, text
    assert 'route="/tasks/",status="201"} 1.0' in text
    # Asked for, the outbox gauge is read from the table (one unpublished event).
    text = (await client.get("/metrics", params={"name[]": "outbox_backlog"})).text
    assert "outbox_backlog 1.0" in text and "http_requests_total" not in text


async def test_rate_limit(make_app: AppFactory) -> None:
    app = await make_app(rate_limit_enabled=True, rate_limit_per_minute=5)
    async with client_for(app) as client:
        codes = [(await client.get("/tasks/", params={"limit": 1})).status_code for _ in range(7)]
        assert codes[:5] == [200] * 5
        assert codes[5:] == [429, 429]
        response = await client.get("/tasks/")
        assert response.status_code == 429
        assert 1 <= int(response.headers["retry-after"]) <= 60
        assert response.headers["x-instance-id"] == "test-instance"
        assert (await client.get("/healthz")).status_code == 200  # probes are exempt


async def test_rate_limit_is_off_by_default(client: httpx.AsyncClient) -> None:
    codes = {(await client.get("/healthz")).status_code for _ in range(5)} | {
        (await client.get("/tasks/")).status_code for _ in range(20)
    }
    assert codes == {200}


def task_count(database_url: str) -> int:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM tasks").fetchone()
    assert row is not None
    return int(row[0])


async def test_idempotent_post(client: httpx.AsyncClient, database_url: str) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = await client.post("/tasks/", json={"title": "once"}, headers=headers)
    second = await client.post("/tasks/", json={"title": "once"}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert task_count(database_url) == 1
    conflict = await client.post("/tasks/", json={"title": "different"}, headers=headers)
    assert conflict.status_code == 422
    assert conflict.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert conflict.json()["detail"][0]["type"] == "idempotency_key_reused"
    assert task_count(database_url) == 1
    other = await client.post("/tasks/", json={"title": "once"}, headers={"Idempotency-Key": "order-43"})
    assert other.json()["id"] != first.json()["id"]


async def test_concurrent_idempotent_posts_create_one_task(app: FastAPI, database_url: str) -> None:
    async with client_for(app) as client:
        responses = await asyncio.gather(
            *(client.post("/tasks/", json={"title": "race"}, headers={"Idempotency-Key": "race-1"}) for _ in range(6))
        )
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert task_count(database_url) == 1


async def test_read_consistency_header_is_accepted(make_app: AppFactory, database_url: str) -> None:
    # The primary doubles as a "replica" here: reads are routed through the replica pool.
    app = await make_app(database_replica_urls=database_url)
    async with client_for(app) as client:
        task = (await client.post("/tasks/", json={"title": "replicated"})).json()
        for headers in ({}, {"X-Read-Consistency": "primary"}):
            assert (await client.get(f"/tasks/{task['id']}", headers=headers)).json() == task
            assert (await client.get("/tasks/", headers=headers)).json() == [task]


async def test_access_log_when_enabled(make_app: AppFactory, capfd: pytest.CaptureFixture[str]) -> None:
    app = await make_app(access_log=True, log_level="INFO", instance_id="logged")
    async with client_for(app) as client:
        await client.get("/tasks/12345", headers={"X-Request-Id": "req-77"})
    lines = [line for line in capfd.readouterr().err.splitlines() if '"app.access"' in line]
    import orjson

    entry = orjson.loads(lines[-1])
    assert entry["request_id"] == "req-77"
    assert entry["route"] == "/tasks/{task_id}"
    assert entry["status"] == 404
    assert entry["instance"] == "logged"


async def test_metrics_are_not_served_through_the_load_balancer(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics", headers={"X-Forwarded-For": "198.51.100.1"})
    assert response.status_code == 404
    assert response.json() == {"detail": "Not Found"}
    assert (await client.get("/metrics")).status_code == 200  # Prometheus, straight to the replica


async def test_docs_can_be_turned_off(make_app: AppFactory) -> None:
    app = await make_app(docs_enabled=False)
    async with client_for(app) as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await client.get(path)).status_code == 404, path
        assert (await client.get("/tasks/")).status_code == 200


async def test_cors_is_off_by_default_and_a_setting(make_app: AppFactory) -> None:
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
    app = await make_app()
    async with client_for(app) as client:
        response = await client.options("/tasks/", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    app = await make_app(cors_origins="https://app.example.com")
    async with client_for(app) as client:
        response = await client.options("/tasks/", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://app.example.com"
        other = await client.options("/tasks/", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
