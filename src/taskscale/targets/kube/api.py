"""A thin JSON client for the Kubernetes API, on top of the official ``kubernetes`` package.

The official client loads the kubeconfig (contexts, certificates, tokens, exec plugins) and owns
the connection pool; requests go through its ``ApiClient.call_api`` with plain dicts, so the few
kinds taskscale applies need no generated model classes and any manifest applies as written.
Every failure becomes a ``TargetError`` with one line and the fix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes import stream as k8s_stream
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from taskscale.errors import TargetError

FIELD_MANAGER = "taskscale"
REQUEST_TIMEOUT = 15.0
KUBECONFIG_HINT = (
    "start a cluster (`minikube start`) or point KUBECONFIG at your cluster's kubeconfig"
)


@dataclass(frozen=True)
class ExecResult:
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Tunnel:
    """One port-forwarded connection: a socket, and what the kubelet said on the port's
    error channel (a refused connection), None when nothing."""

    sock: Any
    error: Callable[[], str | None]


class KubeApiError(TargetError):
    """The API answered with an HTTP error status."""

    def __init__(self, status: int, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


def kubeconfig_paths() -> list[Path]:
    raw = os.environ.get("KUBECONFIG") or "~/.kube/config"
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p]


def resolve_context(wanted: str | None) -> str:
    """The kubeconfig context ``wanted`` (None: the current one), or a one-line error."""
    paths = kubeconfig_paths()
    existing = [p for p in paths if p.is_file()]
    if not existing:
        where = os.pathsep.join(str(p) for p in paths)
        raise TargetError(f"no kubeconfig found at {where}", hint=KUBECONFIG_HINT)
    try:
        contexts, current = k8s_config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=os.pathsep.join(str(p) for p in existing)
        )
    except (ConfigException, OSError, ValueError) as exc:
        raise TargetError(f"cannot read the kubeconfig: {exc}", hint=KUBECONFIG_HINT) from exc
    names = [str(c["name"]) for c in contexts or []]
    name = wanted or (str(current["name"]) if current else "")
    if not name:
        raise TargetError(
            "the kubeconfig has no current context",
            hint="pass --context NAME or run `kubectl config use-context NAME`",
        )
    if name not in names:
        known = ", ".join(names) or "none"
        raise TargetError(
            f"unknown kube context {name!r} (known: {known})",
            hint="pass --context with one of them, or set [kubernetes] context in taskscale.toml",
        )
    return name


class KubeApi:
    """JSON requests against one cluster (one kubeconfig context)."""

    def __init__(self, context: str | None) -> None:
        self.context = resolve_context(context)
        configuration = k8s_client.Configuration()
        try:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=os.pathsep.join(str(p) for p in kubeconfig_paths() if p.is_file()),
                context=self.context,
                client_configuration=configuration,
                persist_config=False,
            )
        except (ConfigException, OSError, ValueError) as exc:
            raise TargetError(
                f"cannot load kube context {self.context!r}: {exc}", hint=KUBECONFIG_HINT
            ) from exc
        # One quick attempt: an unreachable API should fail in seconds, not after retries.
        configuration.retries = False
        self.server = str(configuration.host)
        self._configuration = configuration
        self._client = k8s_client.ApiClient(configuration)

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    # ------------------------------------------------------------------ requests

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str | int | bool] | None = None,
        content_type: str = "application/json",
        timeout: float = REQUEST_TIMEOUT,
    ) -> dict[str, Any]:
        data = self._send(
            method, path, body=body, query=query, content_type=content_type, timeout=timeout
        ).read()
        if not data:
            return {}
        try:
            parsed = json.loads(data)
        except ValueError as exc:  # JSONDecodeError, or bytes that are not even text
            shown = bytes(data).decode(errors="replace")[:80]
            raise TargetError(
                f"{method} {path}: the Kubernetes API at {self.server} (context "
                f"{self.context}) answered with something that is not JSON: {shown!r}",
                hint="is the kubeconfig's server a Kubernetes API server? (check `kubectl "
                "cluster-info`; a proxy in the way can answer with an HTML page)",
            ) from exc
        return parsed if isinstance(parsed, dict) else {"items": parsed}

    def request_text(self, path: str, query: Mapping[str, str | int | bool]) -> str:
        """A GET whose answer is text (pod logs)."""
        data = self._send("GET", path, query=query).read()
        return bytes(data or b"").decode(errors="replace")

    def get_or_none(self, path: str, **query: str | int | bool) -> dict[str, Any] | None:
        try:
            return self.request("GET", path, query=query or None)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    def stream_lines(
        self,
        path: str,
        query: Mapping[str, str | int | bool],
        *,
        on_open: Callable[[Any], None] | None = None,
    ) -> Iterator[str]:
        """Lines of a streaming GET (pod logs with follow), as they arrive. ``on_open`` gets
        the raw response, so another thread can close it to end a blocked read."""
        raw = self._send("GET", path, query=query, timeout=None).response
        if on_open is not None:
            on_open(raw)
        try:
            pending = b""
            for chunk in raw.stream(4096, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace")
            if pending:
                yield pending.decode(errors="replace")
        finally:
            raw.release_conn()

    def exec(
        self, namespace: str, pod: str, container: str, command: list[str], *, timeout: float
    ) -> ExecResult:
        """Run ``command`` in a container (the API's exec websocket), bounded by ``timeout``."""
        # The stream helper swaps the client's transport while it runs: give it its own client
        # so a concurrent request (a log follower thread) is never sent over the websocket path.
        api_client = k8s_client.ApiClient(self._configuration)
        where = f"{pod}/{container}"
        try:
            ws = k8s_stream.stream(
                k8s_client.CoreV1Api(api_client).connect_get_namespaced_pod_exec,
                pod,
                namespace,
                command=command,
                container=container,
                stderr=True,
                stdin=False,
                stdout=True,
                tty=False,
                _preload_content=False,
                _request_timeout=timeout,
            )
        except ApiException as exc:
            raise TargetError(
                f"cannot exec in {where} (context {self.context}): {_reason(exc)}"
            ) from exc
        try:
            ws.run_forever(timeout=timeout)
            if ws.is_open():
                raise TargetError(f"`{command[0]} ...` in {where} timed out after {timeout:g}s")
            stdout = str(ws.read_channel(1))
            stderr = str(ws.read_channel(2))
            try:
                code = int(ws.returncode)
            except (TypeError, ValueError, KeyError, IndexError):
                code = 1
        finally:
            ws.close()
            api_client.close()  # type: ignore[no-untyped-call]
        return ExecResult(code, stdout, stderr)

    def port_forward(self, namespace: str, pod: str, port: int, *, timeout: float) -> Tunnel:
        """A connection to ``port`` inside ``pod`` (the API's port-forward websocket, what
        ``kubectl port-forward`` opens): bytes pass through untouched, so the pod sees a
        connection from its own loopback and no proxy headers. The caller closes its socket,
        which ends the tunnel and the client's thread that pumps it."""
        api_client = k8s_client.ApiClient(self._configuration)  # see exec: its own client
        try:
            forward = k8s_stream.portforward(
                k8s_client.CoreV1Api(api_client).connect_get_namespaced_pod_portforward,
                pod,
                namespace,
                ports=str(port),
                _request_timeout=timeout,
            )
        except ApiException as exc:
            raise TargetError(
                f"cannot port-forward to {pod}:{port} (context {self.context}): {_reason(exc)}"
            ) from exc
        finally:
            api_client.close()  # type: ignore[no-untyped-call]
        sock = forward.socket(port)
        sock.settimeout(timeout)
        return Tunnel(sock, lambda: forward.error(port))

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, str | int | bool] | None = None,
        content_type: str = "application/json",
        timeout: float | None = REQUEST_TIMEOUT,
    ) -> Any:
        """The response of one request whose status is below 400 (its body not read yet);
        a KubeApiError (with the API's message) otherwise, a TargetError if unreachable."""
        headers = {"Accept": "application/json", "Content-Type": content_type}
        # param_serialize adds the credentials (bearer token, refreshed by exec plugins) exactly
        # as the generated API classes do.
        method, url, headers, body, _ = self._client.param_serialize(
            method,
            path,
            query_params=[(k, _query_value(v)) for k, v in (query or {}).items()],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response: Any = self._client.call_api(
                method, url, header_params=headers, body=body, _request_timeout=timeout
            )
        except urllib3.exceptions.HTTPError as exc:
            raise TargetError(
                f"cannot reach the Kubernetes API at {self.server} (context {self.context}): "
                f"{_reason(exc)}",
                hint="is the cluster running? (`minikube start`, or check `kubectl cluster-info`)",
            ) from exc
        if response.status >= 400:
            raise self._error(method, path, response.status, response.read())
        return response

    def _error(self, method: str, path: str, status: int, data: bytes | None) -> KubeApiError:
        message = ""
        try:
            message = str(json.loads(data or b"{}").get("message", ""))
        except (ValueError, AttributeError):
            message = (data or b"").decode(errors="replace")[:200]
        return KubeApiError(status, f"{method} {path}: HTTP {status} {message}".rstrip())


def _query_value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc).splitlines()[0][:200]


def object_path(api_version: str, plural: str, namespace: str | None, name: str | None) -> str:
    """``/api/v1/namespaces/NS/PLURAL/NAME`` (core) or ``/apis/GROUP/VERSION/...``."""
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = prefix
    if namespace is not None:
        path += f"/namespaces/{quote(namespace)}"
    path += f"/{plural}"
    if name is not None:
        path += f"/{quote(name)}"
    return path
