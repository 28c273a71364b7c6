"""Clients that loop requests in threads while a test changes the stack under them."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx


@dataclass
class LoopResult:
    errors: list[str] = field(default_factory=list)
    answered: Counter[str] = field(default_factory=Counter)


def api_headers(api: str) -> dict[str, str]:
    """Headers that let a test use the generated API: a bearer token of a test user when the
    API wants one (``--auth jwt``, the default: 401 on ``/tasks/``), nothing for an open API."""
    account = {"email": "stack-test@example.com", "password": "stack test password"}
    with httpx.Client(base_url=api, timeout=30, trust_env=False) as client:
        if client.get("/tasks/", params={"limit": 1}).status_code != 401:
            return {}
        registered = client.post("/auth/register", json=account)
        assert registered.status_code in (201, 409), registered.text
        form = {"username": account["email"], "password": account["password"]}
        response = client.post("/auth/token", data=form)
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}


def api_client(api: str, timeout: float = 10) -> httpx.Client:
    """A client of the generated API, logged in when the API wants a token."""
    return httpx.Client(base_url=api, timeout=timeout, trust_env=False, headers=api_headers(api))


@contextmanager
def looping_clients(
    api: str,
    path: str = "/healthz",
    *,
    params: dict[str, str | int] | None = None,
    clients: int = 3,
    max_seconds: float = 120,
    settle: float = 0.5,
    headers: dict[str, str] | None = None,
) -> Iterator[LoopResult]:
    """GET ``path`` over keep-alive connections until the block ends (bounded by
    ``max_seconds``); every failure and every answering ``X-Instance-Id`` is recorded."""
    result = LoopResult()
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(base_url=api, timeout=10, trust_env=False, headers=headers) as client:
            deadline = time.monotonic() + max_seconds
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    response = client.get(path, params=params)
                except httpx.HTTPError as exc:
                    result.errors.append(repr(exc))
                    continue
                instance = response.headers.get("x-instance-id")
                if response.status_code != 200:
                    result.errors.append(f"HTTP {response.status_code}")
                elif instance is None:
                    result.errors.append("no x-instance-id")
                else:
                    result.answered[instance] += 1

    threads = [threading.Thread(target=loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(settle)
        yield result
        time.sleep(settle)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
