"""The stack's namespace on a cluster: list, get, apply, delete objects and read pod logs.

The public client the kubernetes target and its load generator share (``KubeApi`` below it
speaks raw paths; this one knows the namespace and the kinds taskscale applies).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from taskscale import proc
from taskscale.errors import TargetError
from taskscale.targets.kube import manifests
from taskscale.targets.kube.api import FIELD_MANAGER, KubeApi, KubeApiError, object_path
from taskscale.targets.logstream import LogSource

# The workloads of a stack, listed with one request per kind.
WORKLOADS = (
    ("StatefulSet", "statefulsets", "apps/v1"),
    ("Deployment", "deployments", "apps/v1"),
    ("Job", "jobs", "batch/v1"),
)
JOB_DELETE_TIMEOUT_S = 60.0


class Namespace:
    """One namespace of one cluster (one kubeconfig context)."""

    def __init__(self, api: KubeApi, name: str) -> None:
        self.api = api
        self.name = name

    def path(self, plural: str, api_version: str = "v1", name: str | None = None) -> str:
        return object_path(api_version, plural, self.name, name)

    def exists(self) -> bool:
        return self.api.get_or_none(object_path("v1", "namespaces", None, self.name)) is not None

    def get(self, plural: str, api_version: str, name: str) -> dict[str, Any] | None:
        return self.api.get_or_none(self.path(plural, api_version, name))

    def items(self, plural: str, api_version: str = "v1", **query: str) -> list[dict[str, Any]]:
        data = self.api.request("GET", self.path(plural, api_version), query=query or None)
        return list(data.get("items") or [])

    def workloads(self) -> list[dict[str, Any]]:
        """StatefulSets, Deployments and Jobs, each with its ``kind`` set (lists omit it)."""
        items: list[dict[str, Any]] = []
        for kind, plural, version in WORKLOADS:
            for obj in self.items(plural, version):
                obj["kind"] = kind
                items.append(obj)
        return items

    def delete(
        self, plural: str, api_version: str, name: str, *, propagation: str = "Background"
    ) -> None:
        """Delete one object; gone already is fine."""
        try:
            self.api.request(
                "DELETE",
                self.path(plural, api_version, name),
                query={"propagationPolicy": propagation},
            )
        except KubeApiError as exc:
            if exc.status != 404:
                raise

    def apply(self, objects: list[dict[str, Any]], on_step: Any = None) -> None:
        """Server-side apply of every object, in order (one field manager); a Job is replaced
        (its pod template is immutable)."""
        for obj in objects:
            kind = obj["kind"]
            name = obj["metadata"]["name"]
            if on_step is not None:
                on_step(f"applying {kind.lower()}/{name}")
            info = manifests.KINDS[kind]
            if kind == "Job":
                self._delete_job(name)
            path = object_path(
                obj["apiVersion"], info.plural, self.name if info.namespaced else None, name
            )
            try:
                self.api.request(
                    "PATCH",
                    path,
                    body=obj,
                    query={"fieldManager": FIELD_MANAGER, "force": True},
                    content_type="application/apply-patch+yaml",
                )
            except KubeApiError as exc:
                raise TargetError(
                    f"the cluster rejected {kind.lower()}/{name}: {exc.message}",
                    hint="fix deploy/k8s and validate it with `kubectl kustomize ... | "
                    "kubectl apply --dry-run=server -f -`",
                ) from exc

    def _delete_job(self, name: str) -> None:
        if self.get("jobs", "batch/v1", name) is None:
            return
        self.delete("jobs", "batch/v1", name)
        gone = proc.poll_until(
            lambda: self.get("jobs", "batch/v1", name) is None,
            JOB_DELETE_TIMEOUT_S,
            max_interval=1.0,
        )
        if not gone:
            raise TargetError(
                f"the previous job {name} was not deleted within {JOB_DELETE_TIMEOUT_S:g}s"
            )

    def pod_log(
        self, pod: dict[str, Any], tail: int | None = None, container: str | None = None
    ) -> str:
        """A pod's log (``container``, default its first); KubeApiError when there is none."""
        return self.api.request_text(self._log_path(pod), self._log_query(pod, tail, container))

    def pod_log_source(
        self, pod: dict[str, Any], tail: int, follow: bool, container: str | None = None
    ) -> LogSource:
        """A pod's log (``container``, default its first) for a ``LogStream``: its tail, then
        (``follow``) a streaming request whose response ``close`` ends."""
        responses: list[Any] = []
        lock = threading.Lock()

        def read(stop: threading.Event) -> Iterator[str]:
            if not follow:
                try:
                    text = self.pod_log(pod, tail, container)
                except KubeApiError as exc:
                    yield f"(no log: {exc.message})"
                    return
                yield from text.splitlines()
                return
            query = {**self._log_query(pod, tail, container), "follow": True}

            def opened(response: Any) -> None:
                with lock:
                    responses.append(response)
                if stop.is_set():  # closed before the response arrived
                    response.close()

            yield from self.api.stream_lines(self._log_path(pod), query, on_open=opened)

        def close() -> None:
            with lock:
                for response in responses:
                    response.close()

        label = pod["metadata"]["name"] + (f"/{container}" if container else "")
        return LogSource(label, read, close)

    def _log_path(self, pod: dict[str, Any]) -> str:
        return self.path("pods", name=pod["metadata"]["name"]) + "/log"

    @staticmethod
    def _log_query(
        pod: dict[str, Any], tail: int | None, container: str | None = None
    ) -> dict[str, str | int | bool]:
        name = container or pod["spec"]["containers"][0]["name"]
        query: dict[str, str | int | bool] = {"container": name}
        if tail is not None:
            query["tailLines"] = tail
        return query
