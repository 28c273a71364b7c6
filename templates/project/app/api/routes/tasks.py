"""Task endpoints (the tutorial's POST /tasks/, GET /tasks/{id}, GET /tasks/?skip=&limit=, plus
PATCH, DELETE, filters and keyset pagination), every one scoped by ``Owner``.

Responses are the JSON bytes app/crud/tasks.py builds (and the cache keeps); ``response_model``
documents them (FastAPI does not re-validate a returned ``Response``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from app.api.deps import AUTH_ERRORS, Owner, ResourceData, resource
from app.api.errors import errors, validation_error
from app.core.db import NodePool as Pool
from app.core.sql import Conn
from app.crud import tasks as crud
from app.schemas.common import MAX_BIGINT, ItemId
from app.schemas.tasks import TaskCreate, TaskOut, TaskStatus, TaskUpdate

router = APIRouter(prefix="/tasks", tags=["tasks"])

JSON = "application/json"
NOT_FOUND = b'{"detail":"Task not found"}'
# The database and the tasks' view of the shared cache (keyed by (tasks, owner, id)).
TaskData = Annotated[ResourceData, Depends(resource("tasks"))]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Makes the request safe to retry: a retry with the same key (per caller) gets the first "
        "response back (header `Idempotent-Replayed: true`) and changes nothing again. Load balancers retry "
        "a POST or PATCH on another replica only when it carries one.",
    ),
]
# Read from the request rather than declared as a Header parameter, which FastAPI would validate
# on every request (about 6 % of a cached read, measured); documented in OpenAPI all the same.
READ_CONSISTENCY = {
    "parameters": [
        {
            "name": "X-Read-Consistency",
            "in": "header",
            "required": False,
            "description": "`primary` reads from the primary, bypassing the cache and the replicas "
            "(read-your-writes); any other value is ignored",
            "schema": {"type": "string"},
        }
    ]
}


def _not_found() -> Response:
    return Response(NOT_FOUND, status_code=404, media_type=JSON)


def _primary(request: Request) -> bool:
    value = request.headers.get("x-read-consistency")
    return value is not None and value.lower() == "primary"


@router.get(
    "/{task_id}",
    response_model=TaskOut,
    responses=errors(*AUTH_ERRORS, 404, e404="Task not found"),
    openapi_extra=READ_CONSISTENCY,
)
async def read_task(request: Request, task_id: ItemId, owner: Owner, tasks: TaskData) -> Response:
    """One task. Served from the in-process cache, then Redis, then PostgreSQL."""
    key = (owner, task_id)
    if tasks.db.replicas and _primary(request):
        body = await tasks.db.loader(crud.get_tasks_json, primary=True).load(key)  # no cache, no replica
    else:
        loader = tasks.db.loader(crud.get_tasks_json)
        body = await tasks.cache.get(owner, task_id, lambda: loader.load(key))
    return _not_found() if body is None else Response(body, media_type=JSON)


@router.get("/", response_model=list[TaskOut], responses=errors(*AUTH_ERRORS), openapi_extra=READ_CONSISTENCY)
async def list_tasks(
    request: Request,
    owner: Owner,
    tasks: TaskData,
    skip: Annotated[int, Query(ge=0, le=1_000_000, description="Offset (shallow pages only)")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    status: Annotated[TaskStatus | None, Query(description="Filter by status")] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_BIGINT, description="Keyset cursor: return tasks with id > after")
    ] = None,
) -> Response:
    """The caller's tasks ordered by id. Deep pages: pass the ``X-Next-Cursor`` value as ``after``."""
    status_value = status.value if status else None
    body, next_after = await tasks.db.read(
        lambda conn: crud.list_tasks(conn, owner=owner, skip=skip, limit=limit, after=after, status=status_value),
        primary=_primary(request),
    )
    headers: dict[str, str] = {}
    if next_after is not None:
        query = f"after={next_after}&limit={limit}" + (f"&status={status.value}" if status else "")
        headers["X-Next-Cursor"] = str(next_after)
        headers["Link"] = f'<{request.url.path}?{query}>; rel="next"'
    return Response(body, media_type=JSON, headers=headers)


@router.post("/", status_code=201, response_model=TaskOut, responses=errors(*AUTH_ERRORS, 413))
async def create_task(
    payload: TaskCreate, owner: Owner, tasks: TaskData, idempotency_key: IdempotencyKey = None
) -> Response:
    """Create a task. With ``Idempotency-Key`` (per caller), a retry returns the first response
    (same id and status, header ``Idempotent-Replayed: true``); the same key with a different
    request is a 422 (``loc``: the header)."""
    status_value = payload.status.value
    db = tasks.db
    if idempotency_key is None:
        async with db.primary.connection() as conn:
            task_id, body = await crud.create_task(conn, owner, payload.title, payload.description, status_value)
    else:
        fingerprint = crud.request_fingerprint(payload.model_dump(mode="json"))

        async def create(conn: Conn) -> tuple[int, bytes]:
            return await crud.create_task(conn, owner, payload.title, payload.description, status_value)

        outcome = await _once(db.primary, owner, idempotency_key, fingerprint, 201, create)
        if isinstance(outcome, Response):
            return outcome
        assert outcome is not None  # a create always has a result
        task_id, body = outcome
    await tasks.cache.written(owner, task_id, body, created=True)
    return Response(body, status_code=201, media_type=JSON)


async def _once(
    pool: Pool,
    owner: int,
    key: str,
    fingerprint: str,
    status_code: int,
    apply: Callable[[Conn], Awaitable[tuple[int, bytes] | None]],
) -> tuple[int, bytes] | Response | None:
    """Run ``apply`` once per (owner, key): it commits together with the key and its response.
    A repeat gets the stored response back (``Idempotent-Replayed: true``); a repeat with a
    different request is a 422. Concurrent repeats wait on the key's row until the first commits."""
    async with pool.connection() as conn:
        async with conn.transaction():
            claimed = await crud.claim_idempotency_key(conn, owner, key, fingerprint)
            if claimed:
                result = await apply(conn)
                if result is not None:
                    await crud.store_idempotent_response(conn, owner, key, status_code, result[1], result[0])
                else:  # nothing to remember (a 404): the key may be used again
                    await crud.release_idempotency_key(conn, owner, key)
                return result
        stored = await crud.stored_idempotent_response(conn, owner, key)
    if stored is None or stored[0] != fingerprint or stored[2] is None:
        raise validation_error(
            ("header", "Idempotency-Key"),
            "Idempotency-Key was already used with a different request",
            "idempotency_key_reused",
        )
    return Response(
        stored[2], status_code=stored[1] or status_code, media_type=JSON, headers={"Idempotent-Replayed": "true"}
    )


@router.patch("/{task_id}", response_model=TaskOut, responses=errors(*AUTH_ERRORS, 404, 413, e404="Task not found"))
async def update_task(
    task_id: ItemId, payload: TaskUpdate, owner: Owner, tasks: TaskData, idempotency_key: IdempotencyKey = None
) -> Response:
    """Change some fields. Setting ``status`` to ``done`` emits a ``completed`` event. With
    ``Idempotency-Key``, a retry returns the first response and emits no second event."""
    changes = payload.model_dump(exclude_unset=True, mode="json")
    if idempotency_key is None or not changes:
        async with tasks.db.primary.connection() as conn:
            body = await crud.update_task(conn, owner, task_id, changes)
    else:
        fingerprint = crud.request_fingerprint({"patch": task_id, **changes})

        async def update(conn: Conn) -> tuple[int, bytes] | None:
            found = await crud.update_task(conn, owner, task_id, changes)
            return None if found is None else (task_id, found)

        outcome = await _once(tasks.db.primary, owner, idempotency_key, fingerprint, 200, update)
        if isinstance(outcome, Response):
            return outcome
        body = None if outcome is None else outcome[1]
    if body is None:
        return _not_found()
    if changes:
        await tasks.cache.written(owner, task_id, body)
    return Response(body, media_type=JSON)


@router.delete("/{task_id}", status_code=204, responses=errors(*AUTH_ERRORS, 404, e404="Task not found"))
async def delete_task(task_id: ItemId, owner: Owner, tasks: TaskData) -> Response:
    async with tasks.db.primary.connection() as conn:
        deleted = await crud.delete_task(conn, owner, task_id)
    if not deleted:
        return _not_found()
    await tasks.cache.written(owner, task_id, None)
    return Response(status_code=204)
