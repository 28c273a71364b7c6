"""Pure-ASGI middleware: observability (request id, X-Instance-Id, metrics, access log) and the
request-body limit.

Pure ASGI (never BaseHTTPMiddleware, which adds a task and a memory stream per request). The
access log is off by default (ACCESS_LOG=true turns it on): one JSON line per request costs more
than the rest of a cached GET. Nothing here answers a request on the app's behalf except a 413:
authentication, rate limiting and every read happen in the routes' dependencies.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.logging import request_id_var
from app.core.metrics import Metrics

access_log = logging.getLogger("app.access")

_UNMATCHED = "unmatched"


class ObservabilityMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        instance_id: str,
        metrics: Metrics,
    ) -> None:
        self.app = app
        self.instance_header = (b"x-instance-id", instance_id.encode())
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value[:128]
                break
        if request_id is None:
            request_id = secrets.token_hex(8).encode()
        token = request_id_var.set(request_id.decode("latin-1"))
        extra_headers = [self.instance_header, (b"x-request-id", request_id)]
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), *extra_headers]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route: Any = scope.get("route")
            template = route.path if route is not None else _UNMATCHED
            self.metrics.observe_request(scope["method"], template, status, elapsed)
            if access_log.disabled is False and access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "%s %s %d",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={"route": template, "status": status, "duration_ms": round(elapsed * 1000, 3)},
                )
            request_id_var.reset(token)


class BodyTooLarge(HTTPException):
    def __init__(self) -> None:
        super().__init__(status_code=413, detail="Request body too large")


class BodyLimitMiddleware:
    """413 for a request body over ``max_bytes``: at once from Content-Length, or as soon as a
    streamed (chunked) body passes the limit while the route reads it."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_large = int(value) > self.max_bytes
                except ValueError:
                    too_large = False  # uvicorn rejects a malformed Content-Length itself
                if too_large:
                    await _send_error(send, 413, "Request body too large")
                    return
                break
            if name == b"transfer-encoding":
                chunked = True
        if not chunked:
            await self.app(scope, receive, send)  # no body, or one within the declared length
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge  # FastAPI re-raises HTTPExceptions from body reading
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _send_error(send, 413, "Request body too large")


async def _send_error(send: Send, status: int, detail: str) -> None:
    body = orjson.dumps({"detail": detail})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
