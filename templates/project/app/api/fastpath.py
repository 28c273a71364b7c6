"""Serve ``GET /tasks/{id}`` hits of the in-process cache before FastAPI's routing.

A hit is a dict lookup; FastAPI's routing, dependency solving and path-parameter validation
would cost more than everything else on that path. This pure-ASGI layer sits inside the
observability middleware (request id, X-Instance-Id, metrics still apply) and answers only when
the path is ``/tasks/<decimal id within bigint>``, the memory layer is active and holds the id.
Everything else (misses, invalid ids, other routes, ``X-Read-Consistency: primary`` with
replicas) falls through to FastAPI, which gives the same answers the slow way.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.deps import Services
from app.core.cache import TOMBSTONE
from app.schemas import MAX_BIGINT

PREFIX = "/tasks/"
_PREFIX_LEN = len(PREFIX)
_MAX_DIGITS = len(str(MAX_BIGINT))
_NOT_FOUND = b'{"detail":"Task not found"}'
_JSON = (b"content-type", b"application/json")


@dataclass(frozen=True)
class RouteLabel:
    """Stands in for the matched route in ``scope["route"]``: metrics read its ``path``."""

    path: str


READ_ROUTE = RouteLabel("/tasks/{task_id}")


class CachedTaskFastPath:
    def __init__(self, app: ASGIApp, *, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            if path.startswith(PREFIX):
                digits = path[_PREFIX_LEN:]
                if 0 < len(digits) <= _MAX_DIGITS and digits.isascii() and digits.isdigit():
                    body = self._lookup(int(digits), scope)
                    if body is not None:
                        scope["route"] = READ_ROUTE
                        status = 404 if body == TOMBSTONE else 200
                        content = _NOT_FOUND if status == 404 else body
                        headers = [_JSON, (b"content-length", str(len(content)).encode())]
                        await send({"type": "http.response.start", "status": status, "headers": headers})
                        await send({"type": "http.response.body", "body": content})
                        return
        await self.app(scope, receive, send)

    def _lookup(self, task_id: int, scope: Scope) -> bytes | None:
        services = self.services
        cache = services.cache
        if not cache.local_active or not 1 <= task_id <= MAX_BIGINT:
            return None
        if services.db.replicas:
            for name, value in scope["headers"]:
                if name == b"x-read-consistency" and value.lower() == b"primary":
                    return None
        body = cache.get_local(task_id)
        if body is not None:
            services.metrics.cache_hit_local.inc()
        return body
