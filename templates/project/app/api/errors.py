"""One error shape, documented per route.

Every error body is ``{"detail": ...}``: a string (``ErrorDetail``) for every status except 422,
and FastAPI's validation array (``HTTPValidationError``) for 422, whatever raised it. Routes
declare the statuses they can return with ``responses=errors(401, 404, ...)``, so the OpenAPI
document lists every 4xx a client can get, with its schema (tests/test_contract.py checks it).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import psycopg
import psycopg_pool
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.schemas.common import ErrorDetail

log = logging.getLogger("app")

_DESCRIPTIONS = {
    401: "Missing, expired or invalid bearer token",
    404: "Not found (or owned by someone else)",
    409: "Conflict with the current state",
    413: "Request body too large",
    429: "Too many requests (header Retry-After)",
    503: "Database unavailable (header Retry-After)",
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
    503: {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
}


def errors(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status with the ``ErrorDetail`` schema. A keyword
    ``e404="Task not found"`` overrides a description."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {
            "model": ErrorDetail,
            "description": descriptions.get(f"e{status}", _DESCRIPTIONS.get(status, "Error")),
        }
        if status in _HEADERS:
            entry["headers"] = _HEADERS[status]
        documented[status] = entry
    return documented


def validation_error(loc: tuple[str | int, ...], msg: str, kind: str) -> RequestValidationError:
    """A 422 in FastAPI's validation shape, for checks a route makes itself."""
    return RequestValidationError([{"loc": loc, "msg": msg, "type": kind}])


def json_response(status: int, content: Any, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps(content, default=str)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # Echo location, message and type only: the offending input can be huge or not JSON-safe.
    details = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]
    return json_response(422, {"detail": details})


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code in (400, 422):
        # A body FastAPI could not parse at all (nesting too deep, a broken form) is a 400
        # there: keep every unusable body a 422 in the validation shape, like malformed JSON.
        detail = [{"loc": ["body"], "msg": str(exc.detail), "type": "value_error"}]
        return json_response(422, {"detail": detail}, dict(exc.headers or {}))
    return json_response(exc.status_code, {"detail": str(exc.detail)}, dict(exc.headers or {}))


async def _database_unavailable(_request: Request, exc: Exception) -> Response:
    log.warning("database unavailable: %s", exc)
    return json_response(503, {"detail": "Database unavailable"}, {"Retry-After": "1"})


async def _data_error(_request: Request, exc: Exception) -> Response:
    # Input that passed validation but the database still refused (should not happen).
    log.warning("database rejected input: %s", exc)
    return json_response(422, {"detail": [{"loc": ["body"], "msg": "Invalid value", "type": "value_error"}]})


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(psycopg_pool.PoolTimeout, _database_unavailable)
    app.add_exception_handler(psycopg.OperationalError, _database_unavailable)
    app.add_exception_handler(psycopg.DataError, _data_error)
