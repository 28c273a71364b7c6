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


@contextmanager
def looping_clients(
    api: str,
    path: str = "/healthz",
    *,
    params: dict[str, str | int] | None = None,
    clients: int = 3,
    max_seconds: float = 120,
    settle: float = 0.5,
) -> Iterator[LoopResult]:
    """GET ``path`` over keep-alive connections until the block ends (bounded by
    ``max_seconds``); every failure and every answering ``X-Instance-Id`` is recorded."""
    result = LoopResult()
    stop = threading.Event()

    def loop() -> None:
        with httpx.Client(base_url=api, timeout=10, trust_env=False) as client:
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
