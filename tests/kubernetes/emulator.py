"""kmock's KubernetesEmulator served on loopback from a background thread, for the sync client.

Two gaps of the emulator are filled here, as its docs suggest ("inherit and implement"):
server-side apply (PATCH with application/apply-patch+yaml) creates a missing object as a real
API server does, and Namespaces (cluster-scoped objects at /api/v1/namespaces/NAME, a path kmock
reads as "namespace NAME") are kept in a dict, with an optional number of GETs a deleted
namespace stays "Terminating" to exercise the wait and its timeout.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web
import kmock
import yaml
from kmock._internal import enums, rendering

_NAMESPACE_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)$")
_EXEC_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/exec$")
_FORWARD_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/portforward$")
RESOURCES = (
    "v1/pods",
    "v1/services",
    "v1/configmaps",
    "v1/secrets",
    "apps/v1/deployments",
    "apps/v1/statefulsets",
    "batch/v1/jobs",
    "autoscaling/v2/horizontalpodautoscalers",
    "policy/v1/poddisruptionbudgets",
    "networking.k8s.io/v1/networkpolicies",
    "networking.k8s.io/v1/ingresses",
    "apiregistration.k8s.io/v1/apiservices",
)


class ApplyingEmulator(kmock.KubernetesEmulator):
    namespaces: dict[str, dict[str, Any]]
    # GETs a deleted namespace still answers (Terminating) before it is gone; -1: forever.
    terminating_gets: int
    # Pod exec over the websocket protocol the official client speaks (v4.channel.k8s.io):
    # pod name -> (stdout, stderr, exit code); every exec is recorded as (pod, container, argv).
    exec_results: dict[str, tuple[str, str, int]]
    execs: list[tuple[str, str, list[str]]]
    # Port-forward over the same protocol, one port per websocket as the client opens it: pod
    # name -> (host, port) of a real server the tunnel carries bytes to; a pod without one
    # refuses (the kubelet's message on the error channel). Every tunnel is recorded.
    backends: dict[str, tuple[str, int]]
    port_forwards: list[tuple[str, int]]

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.namespaces = {}
        self.terminating_gets = 0
        self.exec_results = {}
        self.execs = []
        self.backends = {}
        self.port_forwards = []
        self._terminating: dict[str, int] = {}
        for resource in RESOURCES:
            self.resources[resource] = {}  # type: ignore[assignment]

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        match = _EXEC_PATH.match(raw_request.path)
        upgrade = raw_request.headers.get("Upgrade", "").lower() == "websocket"
        if match and upgrade:
            return await self._exec(raw_request, match.group(2))
        match = _FORWARD_PATH.match(raw_request.path)
        if match and upgrade:
            return await self._port_forward(raw_request, match.group(2))
        return await super().__call__(raw_request)

    async def _port_forward(
        self, raw: aiohttp.web.BaseRequest, pod: str
    ) -> aiohttp.web.StreamResponse:
        port = int(raw.query.get("ports", "0").split(",")[0])
        ws = aiohttp.web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(raw)
        self.port_forwards.append((pod, port))
        # Channel 0 carries the data, 1 the errors; each first says which port it serves.
        prefix = port.to_bytes(2, "little")
        await ws.send_bytes(b"\x00" + prefix)
        await ws.send_bytes(b"\x01" + prefix)
        try:
            if pod not in self.backends:
                raise ConnectionRefusedError("connect: connection refused")
            reader, writer = await asyncio.open_connection(*self.backends[pod])
        except OSError as exc:
            message = f"error forwarding port {port} to pod {pod}: {exc}"
            await ws.send_bytes(b"\x01" + message.encode())
            await ws.close()
            return ws

        async def to_pod() -> None:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY and message.data[:1] == b"\x00":
                    writer.write(message.data[1:])
                    await writer.drain()

        async def from_pod() -> None:
            while data := await reader.read(65536):
                await ws.send_bytes(b"\x00" + data)

        pumps = [asyncio.ensure_future(to_pod()), asyncio.ensure_future(from_pod())]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        writer.close()
        await ws.close()
        return ws

    async def _exec(self, raw: aiohttp.web.BaseRequest, pod: str) -> aiohttp.web.StreamResponse:
        ws = aiohttp.web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(raw)
        self.execs.append((pod, raw.query.get("container", ""), raw.query.getall("command", [])))
        stdout, stderr, code = self.exec_results.get(pod, ("", f"no such pod {pod}\n", 1))
        for channel, text in ((1, stdout), (2, stderr)):
            if text:
                await ws.send_bytes(bytes([channel]) + text.encode())
        status: dict[str, Any] = {"metadata": {}, "status": "Success"}
        if code:
            status = {
                "metadata": {},
                "status": "Failure",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
            }
        await ws.send_bytes(b"\x03" + json.dumps(status).encode())
        await ws.close()
        return ws

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        match = _NAMESPACE_PATH.match(request.url.path)
        if match:
            return self._namespace(request, match.group(1))
        if (
            request.method == enums.method.PATCH
            and request.name is not None
            and request.subresource is None
            and request.resource is not None
            and request.headers.get("Content-Type", "").startswith("application/apply-patch")
        ):
            key = (request.resource, request.namespace, request.name)
            if key not in self.objects or self.objects[key].deleted:
                # A real API server creates the object on apply; the merge below is then a no-op.
                self.objects[key] = request.data
        return await super()._handle(request)

    def _namespace(self, request: rendering.Request, name: str) -> aiohttp.web.StreamResponse:
        method = str(request.method).upper()
        missing = aiohttp.web.json_response(
            {"kind": "Status", "code": 404, "reason": "NotFound", "message": f"{name} not found"},
            status=404,
        )
        if method.endswith("PATCH"):
            self.namespaces[name] = {**request.data, "status": {"phase": "Active"}}
            self._terminating.pop(name, None)
            return aiohttp.web.json_response(self.namespaces[name])
        if name not in self.namespaces:
            return missing
        if method.endswith("DELETE"):
            self.namespaces[name]["status"] = {"phase": "Terminating"}
            self._terminating[name] = self.terminating_gets
        elif name in self._terminating:
            left = self._terminating[name]
            if left == 0:
                del self.namespaces[name], self._terminating[name]
                return missing
            self._terminating[name] = left - 1 if left > 0 else left
        return aiohttp.web.json_response(self.namespaces[name])


@dataclass
class RunningEmulator:
    emulator: ApplyingEmulator
    url: str
    loop: asyncio.AbstractEventLoop

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the emulator's loop (its state is not thread-safe)."""

        async def wrapper() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(10)

    def requests(self) -> list[rendering.Request]:
        """Every request the emulator has seen, in order."""
        return list(self.call(lambda: list(self.emulator)))

    def objects(self, plural: str) -> list[dict[str, Any]]:
        def collect() -> list[dict[str, Any]]:
            return [
                dict(obj.raw)
                for (resource, _, _), obj in self.emulator.objects.items()
                if resource.plural == plural and not obj.deleted
            ]

        return list(self.call(collect))

    def write_kubeconfig(self, path: Path, context: str = "kmock") -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "kmock", "user": {"token": "test-token"}}],
            "contexts": [
                {"name": context, "context": {"cluster": "kmock", "user": "kmock"}},
            ],
            "current-context": context,
        }
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path


@contextmanager
def serve() -> Iterator[RunningEmulator]:
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop: asyncio.Event | None = None
    holder: dict[str, Any] = {}

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        async with ApplyingEmulator() as emulator, kmock.Server(emulator) as server:
            holder["emulator"] = emulator
            holder["url"] = str(server.url).rstrip("/")
            started.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    if not started.wait(15):
        raise RuntimeError("the kmock emulator did not start")
    try:
        yield RunningEmulator(holder["emulator"], holder["url"], loop)
    finally:
        if stop is not None:
            loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
