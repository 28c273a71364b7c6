"""Malformed input of every kind is a 4xx in the documented shape, never a 500, and writes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import psycopg
import pytest

from app.core.config import libpq_url
from tests.conftest import assert_error_shape

pytestmark = pytest.mark.anyio


@pytest.fixture
def nothing_written(database_url: str) -> Iterator[None]:
    """The test's bad requests change no table."""

    def counts() -> tuple[int, ...]:
        with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM outbox),"
                " (SELECT count(*) FROM idempotency_keys), (SELECT max(updated_at)::text FROM tasks)"
            ).fetchone()
        assert row is not None
        return tuple(row)

    before = counts()
    yield
    assert counts() == before


BAD_IDS = ["abc", "0", "-1", "1.5", str(2**63), str(10**30), "1e3", "%00", "nan", "0x10"]


@pytest.mark.parametrize("task_id", BAD_IDS)
async def test_bad_task_ids(client: httpx.AsyncClient, task_id: str, nothing_written: None) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        kwargs = {"json": {"title": "x"}} if method == "PATCH" else {}
        response = await client.request(method, f"/tasks/{task_id}", **kwargs)  # type: ignore[arg-type]
        assert response.status_code == 422, (method, task_id, response.text)
        assert_error_shape(response)


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
    assert_error_shape(response)


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
async def test_bad_create_bodies(client: httpx.AsyncClient, body: object, nothing_written: None) -> None:
    response = await client.post("/tasks/", json=body)
    assert response.status_code == 422, (body, response.text)
    assert_error_shape(response)


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
        (b'{"title": "x"}', "multipart/form-data; boundary=x"),
        (b'{"title": "x"}', "application/xml"),
        (b"[" * 5000 + b"]" * 5000, "application/json"),
    ],
)
async def test_non_json_bodies(
    client: httpx.AsyncClient, content: bytes, content_type: str, nothing_written: None
) -> None:
    response = await client.post("/tasks/", content=content, headers={"content-type": content_type})
    assert response.status_code == 422, (content[:40], response.text)
    assert_error_shape(response)


async def test_oversize_bodies_are_413(client: httpx.AsyncClient, nothing_written: None) -> None:
    big = b'{"title": "x", "description": "' + b"y" * 70_000 + b'"}'
    for method, url in (("POST", "/tasks/"), ("PATCH", "/tasks/1")):
        response = await client.request(method, url, content=big, headers={"content-type": "application/json"})
        assert response.status_code == 413, (method, response.text)
        assert_error_shape(response)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: streamed, counted as it comes
        for _ in range(100):
            yield b" " * 1024

    response = await client.post("/tasks/", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json() == {"detail": "Request body too large"}


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
    assert_error_shape(response)
    assert (await client.get(f"/tasks/{task['id']}")).json() == task


async def test_bad_idempotency_key(client: httpx.AsyncClient, nothing_written: None) -> None:
    for key in ("k" * 300, ""):
        response = await client.post("/tasks/", json={"title": "x"}, headers={"Idempotency-Key": key})
        assert response.status_code == 422
        assert_error_shape(response)


async def test_unicode_and_control_characters_are_stored_faithfully(client: httpx.AsyncClient) -> None:
    for title in ("משימה 📝 ünïcode", "tab\tnewline\nbell\x07 esc\x1b del\x7f", "\u202eright-to-left", "e\u0301"):
        task = (await client.post("/tasks/", json={"title": title, "description": "🚀" * 100})).json()
        assert (await client.get(f"/tasks/{task['id']}")).json()["title"] == title
