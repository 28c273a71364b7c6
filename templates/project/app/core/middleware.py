"""One pure-ASGI middleware: request id, X-Instance-Id, rate limit, metrics, access log.

Pure ASGI (never BaseHTTPMiddleware, which adds a task and a memory stream per request). The
access log is off by default (ACCESS_LOG=true turns it on): one JSON line per request costs more
than the rest of a cached GET.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.logging import request_id_var
from app.core.metrics import Metrics
from app.core.ratelimit import RateLimiter

access_log = logging.getLogger("app.access")

_UNMATCHED = "unmatched"
_EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})


class ObservabilityMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        instance_id: str,
        metrics: Metrics,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        self.app = app
        self.instance_header = (b"x-instance-id", instance_id.encode())
        self.metrics = metrics
        self.rate_limiter = rate_limiter

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
            if self.rate_limiter is not None and scope["path"] not in _EXEMPT:
                client = scope.get("client")
                retry_after = await self.rate_limiter.check(client[0] if client else "unknown")
                if retry_after is not None:
                    self.metrics.rate_limited.inc()
                    await _too_many_requests(send_wrapper, retry_after)
                    return
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


async def _too_many_requests(send: Send, retry_after: int) -> None:
    body = orjson.dumps({"detail": "Too many requests"})
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(retry_after).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
