"""The seed-compatible API contract plus PATCH, DELETE, filters and keyset pagination."""

from __future__ import annotations

from datetime import datetime

import httpx
import pytest

pytestmark = pytest.mark.anyio


async def create(client: httpx.AsyncClient, title: str = "Write report", **fields: object) -> dict[str, object]:
    response = await client.post("/tasks/", json={"title": title, "description": "quarterly", **fields})
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


async def test_create_and_read_task(client: httpx.AsyncClient) -> None:
    task = await create(client)
    assert set(task) == {"id", "title", "description", "status", "created_at", "updated_at"}
    assert task["status"] == "pending"
    assert task["title"] == "Write report"
    assert datetime.fromisoformat(str(task["created_at"])).tzinfo is not None
    response = await client.get(f"/tasks/{task['id']}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == task


async def test_missing_task_is_404_with_seed_detail(client: httpx.AsyncClient) -> None:
    response = await client.get("/tasks/999999")
    assert response.status_code == 404
    assert response.json() == {"detail": "Task not found"}


async def test_list_with_skip_and_limit(client: httpx.AsyncClient) -> None:
    ids = [(await create(client, f"t{i}"))["id"] for i in range(5)]
    response = await client.get("/tasks/", params={"skip": 1, "limit": 2})
    assert response.status_code == 200
    assert [t["id"] for t in response.json()] == ids[1:3]
    assert [t["id"] for t in (await client.get("/tasks/")).json()] == ids


async def test_create_with_status_and_without_description(client: httpx.AsyncClient) -> None:
    response = await client.post("/tasks/", json={"title": "x", "status": "in_progress"})
    assert response.status_code == 201
    assert response.json()["status"] == "in_progress"
    assert response.json()["description"] is None


async def test_patch_and_delete(client: httpx.AsyncClient) -> None:
    task = await create(client)
    response = await client.patch(f"/tasks/{task['id']}", json={"status": "done", "title": "Done report"})
    assert response.status_code == 200
    updated = response.json()
    assert updated["status"] == "done"
    assert updated["title"] == "Done report"
    assert updated["description"] == "quarterly"
    assert updated["updated_at"] >= task["updated_at"]
    assert (await client.patch("/tasks/424242", json={"title": "x"})).status_code == 404
    assert (await client.delete(f"/tasks/{task['id']}")).status_code == 204
    assert (await client.get(f"/tasks/{task['id']}")).status_code == 404
    assert (await client.delete(f"/tasks/{task['id']}")).status_code == 404


async def test_filter_by_status_and_keyset_pagination(client: httpx.AsyncClient) -> None:
    for i in range(7):
        await create(client, f"t{i}", status="done" if i % 2 else "pending")
    pending = (await client.get("/tasks/", params={"status": "pending"})).json()
    assert [t["title"] for t in pending] == ["t0", "t2", "t4", "t6"]

    seen: list[int] = []
    params: dict[str, str | int] = {"limit": 3}
    pages = 0
    while True:
        response = await client.get("/tasks/", params=params)
        assert response.status_code == 200
        seen += [t["id"] for t in response.json()]
        pages += 1
        cursor = response.headers.get("x-next-cursor")
        if cursor is None:
            break
        assert 'rel="next"' in response.headers["link"]
        params = {"limit": 3, "after": cursor}
    assert pages == 3
    assert seen == sorted(seen) and len(seen) == 7

    done = (await client.get("/tasks/", params={"status": "done", "after": seen[1], "limit": 10})).json()
    assert all(t["status"] == "done" and t["id"] > seen[1] for t in done)


async def test_every_response_has_instance_and_request_id(client: httpx.AsyncClient) -> None:
    for response in (
        await client.get("/healthz"),
        await client.get("/tasks/1"),
        await client.get("/tasks/abc"),
        await client.get("/nowhere"),
    ):
        assert response.headers["x-instance-id"] == "test-instance"
        assert response.headers["x-request-id"]
    response = await client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"


async def test_openapi_docs_are_served(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert "/tasks/{task_id}" in schema["paths"]
    assert (await client.get("/docs")).status_code == 200
    read = schema["paths"]["/tasks/{task_id}"]["get"]
    assert "X-Read-Consistency" in {p["name"] for p in read["parameters"]}
    assert read["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorDetail")
    assert read["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/HTTPValidationError")
    patch_body = schema["components"]["schemas"]["TaskUpdate"]["properties"]
    assert patch_body["status"]["$ref"] == "#/components/schemas/TaskStatus"  # not nullable
    assert "anyOf" not in patch_body["status"]
    assert "anyOf" not in patch_body["title"]
