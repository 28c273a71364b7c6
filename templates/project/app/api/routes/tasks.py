"""Task endpoints. Seed-compatible: POST /tasks/, GET /tasks/{id}, GET /tasks/?skip=&limit=."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from app import crud
from app.api.deps import Services
from app.core.cache import TOMBSTONE
from app.schemas import MAX_BIGINT, Detail, TaskCreate, TaskOut, TaskStatus, TaskUpdate

router = APIRouter(prefix="/tasks", tags=["tasks"])

JSON = "application/json"
NOT_FOUND = b'{"detail":"Task not found"}'
TaskId = Annotated[int, Path(ge=1, le=MAX_BIGINT, description="Task id (bigint)")]
IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255, description="Makes POST retry-safe")
]
_404: dict[int | str, dict[str, Any]] = {404: {"model": Detail, "description": "Task not found"}}


def _not_found() -> Response:
    return Response(NOT_FOUND, status_code=404, media_type=JSON)


def _wants_primary(request: Request) -> bool:
    value = request.headers.get("x-read-consistency")
    return value is not None and value.lower() == "primary"


@router.get("/{task_id}", responses={200: {"model": TaskOut}, **_404})
async def read_task(request: Request, task_id: TaskId) -> Response:
    """One task. Served from the in-process cache, then Redis, then PostgreSQL."""
    services: Services = request.app.state.services
    if services.db.replicas and _wants_primary(request):
        body = await services.primary_loader.load(task_id)  # bypass the cache and the replicas
        return _not_found() if body is None else Response(body, media_type=JSON)
    cache = services.cache
    if cache.local_active:
        body = cache.get_local(task_id)
        if body is not None:
            services.metrics.cache_hit_local.inc()
            return _not_found() if body == TOMBSTONE else Response(body, media_type=JSON)
    loader = services.read_loader
    body = await cache.get(task_id, lambda: loader.load(task_id))
    if body is None or body == TOMBSTONE:
        return _not_found()
    return Response(body, media_type=JSON)


@router.get("/", responses={200: {"model": list[TaskOut]}})
async def list_tasks(
    request: Request,
    skip: Annotated[int, Query(ge=0, le=1_000_000, description="Offset (shallow pages only)")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    status: Annotated[TaskStatus | None, Query(description="Filter by status")] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_BIGINT, description="Keyset cursor: return tasks with id > after")
    ] = None,
) -> Response:
    """Tasks ordered by id. Deep pages: pass the ``X-Next-Cursor`` value as ``after``."""
    services: Services = request.app.state.services
    async with services.db.reader(_wants_primary(request)).connection() as conn:
        body, next_after = await crud.list_tasks(
            conn, skip=skip, limit=limit, after=after, status=status.value if status else None
        )
    headers: dict[str, str] = {}
    if next_after is not None:
        query = f"after={next_after}&limit={limit}" + (f"&status={status.value}" if status else "")
        headers["X-Next-Cursor"] = str(next_after)
        headers["Link"] = f'<{request.url.path}?{query}>; rel="next"'
    return Response(body, media_type=JSON, headers=headers)


@router.post("/", status_code=201, responses={201: {"model": TaskOut}, 422: {"model": Detail}})
async def create_task(request: Request, payload: TaskCreate, idempotency_key: IdempotencyKey = None) -> Response:
    """Create a task. With ``Idempotency-Key``, a retry returns the first response (same id and
    status, header ``Idempotent-Replayed: true``); the same key with a different body is a 422."""
    services: Services = request.app.state.services
    pool = services.db.primary
    status_value = payload.status.value
    if idempotency_key is None:
        async with pool.connection() as conn:
            task_id, body = await crud.create_task(conn, payload.title, payload.description, status_value)
    else:
        fingerprint = crud.request_fingerprint(payload.model_dump(mode="json"))
        async with pool.connection() as conn:
            async with conn.transaction():
                claimed = await crud.claim_idempotency_key(conn, idempotency_key, fingerprint)
                if claimed:
                    task_id, body = await crud.create_task(conn, payload.title, payload.description, status_value)
                    await crud.store_idempotent_response(conn, idempotency_key, 201, body, task_id)
            if not claimed:
                stored = await crud.stored_idempotent_response(conn, idempotency_key)
        if not claimed:
            if stored is None or stored[0] != fingerprint or stored[2] is None:
                return JSONResponse(
                    {"detail": "Idempotency-Key was already used with a different request body"}, status_code=422
                )
            return Response(
                stored[2], status_code=stored[1] or 201, media_type=JSON, headers={"Idempotent-Replayed": "true"}
            )
    await services.cache.written(task_id, body, created=True)
    return Response(body, status_code=201, media_type=JSON)


@router.patch("/{task_id}", responses={200: {"model": TaskOut}, **_404})
async def update_task(request: Request, task_id: TaskId, payload: TaskUpdate) -> Response:
    """Change some fields. Setting ``status`` to ``done`` emits a ``completed`` event."""
    services: Services = request.app.state.services
    changes = payload.model_dump(exclude_unset=True, mode="json")
    if "title" in changes and changes["title"] is None:
        return JSONResponse({"detail": "title must not be null"}, status_code=422)
    if "status" in changes and changes["status"] is None:
        return JSONResponse({"detail": "status must not be null"}, status_code=422)
    async with services.db.primary.connection() as conn:
        body = await crud.update_task(conn, task_id, changes)
    if body is None:
        return _not_found()
    if changes:
        await services.cache.written(task_id, body)
    return Response(body, media_type=JSON)


@router.delete("/{task_id}", status_code=204, responses=_404)
async def delete_task(request: Request, task_id: TaskId) -> Response:
    services: Services = request.app.state.services
    async with services.db.primary.connection() as conn:
        deleted = await crud.delete_task(conn, task_id)
    if not deleted:
        return _not_found()
    await services.cache.written(task_id, None)
    return Response(status_code=204)
