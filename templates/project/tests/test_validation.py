"""Malformed input of every kind is a 422, never a 500."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.anyio

BAD_IDS = ["abc", "0", "-1", "1.5", str(2**63), str(10**30), "1e3", "%00", "nan", "0x10"]


@pytest.mark.parametrize("task_id", BAD_IDS)
async def test_bad_task_ids(client: httpx.AsyncClient, task_id: str) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        kwargs = {"json": {"title": "x"}} if method == "PATCH" else {}
        response = await client.request(method, f"/tasks/{task_id}", **kwargs)  # type: ignore[arg-type]
        assert response.status_code == 422, (method, task_id, response.text)
        assert "detail" in response.json()


@pytest.mark.parametrize(
    "params",
    [
        {"limit": -1},
        {"limit": 0},
        {"limit": 100000},
        {"skip": -5},
        {"skip": "x"},
        {"limit": str(2**70)},
        {"status": "archived"},
        {"after": -1},
        {"after": str(2**63)},
        {"after": "abc"},
    ],
)
async def test_bad_list_queries(client: httpx.AsyncClient, params: dict[str, object]) -> None:
    response = await client.get("/tasks/", params=params)  # type: ignore[arg-type]
    assert response.status_code == 422, (params, response.text)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"title": ""},
        {"title": None},
        {"title": 123},
        {"title": ["a"]},
        {"title": {"a": 1}},
        {"title": "x" * 201},
        {"title": "x", "description": "y" * 10_001},
        {"title": "x", "description": 5},
        {"title": "x", "status": "archived"},
        {"title": "x", "status": 1},
        {"title": "nul\x00byte"},
        {"title": "x", "description": "nul\x00"},
        [],
        "just a string",
        123,
        None,
    ],
)
async def test_bad_create_bodies(client: httpx.AsyncClient, body: object) -> None:
    response = await client.post("/tasks/", json=body)
    assert response.status_code == 422, (body, response.text)


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"", "application/json"),
        (b'{"title": "\\ud800"}', "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),
        (b"title=x", "application/x-www-form-urlencoded"),
        (b'{"title": "x"}', "text/plain"),
        (b'{"title": "x"' + b" " * 1000, "application/json"),
    ],
)
async def test_non_json_bodies(client: httpx.AsyncClient, content: bytes, content_type: str) -> None:
    response = await client.post("/tasks/", content=content, headers={"content-type": content_type})
    assert response.status_code == 422, (content[:40], response.text)


@pytest.mark.parametrize(
    "body",
    [
        {"title": None},
        {"status": None},
        {"title": ""},
        {"status": "nope"},
        {"unknown": 1},
        {"title": 5},
        {"description": "\x00"},
    ],
)
async def test_bad_patch_bodies(client: httpx.AsyncClient, body: dict[str, object]) -> None:
    task = (await client.post("/tasks/", json={"title": "x"})).json()
    response = await client.patch(f"/tasks/{task['id']}", json=body)
    assert response.status_code == 422, (body, response.text)


async def test_bad_idempotency_key(client: httpx.AsyncClient) -> None:
    response = await client.post("/tasks/", json={"title": "x"}, headers={"Idempotency-Key": "k" * 300})
    assert response.status_code == 422


async def test_unicode_is_stored_faithfully(client: httpx.AsyncClient) -> None:
    title = "משימה 📝 ünïcode"
    task = (await client.post("/tasks/", json={"title": title, "description": "🚀" * 100})).json()
    assert (await client.get(f"/tasks/{task['id']}")).json()["title"] == title
