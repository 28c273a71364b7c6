"""A generated project, a kubeconfig pointing at kmock's emulator, and a fake controller."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskscale.config import Project, load_project
from taskscale.scaffold import NewProjectSpec, create_project
from tests.kubernetes.emulator import RunningEmulator, serve

METRICS_APISERVICE = "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.metrics.k8s.io"
APPLY = {"Content-Type": "application/apply-patch+yaml"}
APP_IMAGE = "registry.example.com/tasks-api-app:1.0"
LOADTEST_IMAGE = "registry.example.com/tasks-api-loadtest:1.0"

# Skipped without kubectl, except under CI, where the tests must run (and fail without it).
needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None and not os.environ.get("CI"),
    reason="kubectl (for `kubectl kustomize`) is not installed",
)


@pytest.fixture(scope="session")
def k8s_project_template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One generated project per broker, copied per test (rendering is the slow part)."""
    out: dict[str, Path] = {}
    for broker in ("redis", "kafka"):
        base = tmp_path_factory.mktemp(f"k8s-{broker}")
        result = create_project(
            NewProjectSpec(name="tasks-api", output_dir=base, broker=broker, git=False)
        )
        # A pushed image: `up --target kubernetes` refuses a local-only name. taskscale.toml is
        # the one place it is set (deploy/k8s gets it through kustomize's images:).
        toml = result.path / "taskscale.toml"
        text = toml.read_text(encoding="utf-8")
        assert 'app = "tasks-api-app:0.1.0"' in text
        text = text.replace("tasks-api-app:0.1.0", APP_IMAGE)
        toml.write_text(text.replace("tasks-api-loadtest:0.1.0", LOADTEST_IMAGE), encoding="utf-8")
        out[broker] = result.path
    return out


@pytest.fixture
def k8s_project(k8s_project_template: dict[str, Path], tmp_path: Path) -> Project:
    root = tmp_path / "tasks-api"
    shutil.copytree(k8s_project_template["redis"], root)
    project = load_project(root)
    # Short timeouts: the emulator answers at once and nothing ever runs there (6 s, not
    # less: the fake controller is a thread that a loaded 2-core CI machine can starve).
    project.config = project.config.model_copy(
        update={"kubernetes": project.config.kubernetes.model_copy(update={"rollout_timeout": 6.0})}
    )
    return project


@pytest.fixture
def emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningEmulator]:
    with serve() as running:
        kubeconfig = running.write_kubeconfig(tmp_path / "kubeconfig")
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        yield running


@pytest.fixture
def metrics_server(emulator: RunningEmulator) -> None:
    body = {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": "v1beta1.metrics.k8s.io"},
        "spec": {"group": "metrics.k8s.io", "version": "v1beta1"},
    }
    httpx.patch(emulator.url + METRICS_APISERVICE, json=body, headers=APPLY).raise_for_status()


class FakeController:
    """Marks every workload ready (as the kubelet and controllers would) until stopped."""

    def __init__(self, emulator: RunningEmulator) -> None:
        self.emulator = emulator
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FakeController:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.reconcile()

    def reconcile(self) -> None:
        for plural, group in (("deployments", "apps/v1"), ("statefulsets", "apps/v1")):
            for obj in self.emulator.objects(plural):
                n = obj.get("spec", {}).get("replicas", 1)
                status = {
                    "replicas": n,
                    "readyReplicas": n,
                    "updatedReplicas": n,
                    "availableReplicas": n,
                }
                if obj.get("status", {}) != status:
                    self._patch_status(group, plural, obj, status)
        for obj in self.emulator.objects("jobs"):
            if not obj.get("status", {}).get("succeeded"):
                self._patch_status("batch/v1", "jobs", obj, {"succeeded": 1})

    def _patch_status(
        self, group: str, plural: str, obj: dict[str, Any], status: dict[str, Any]
    ) -> None:
        meta = obj["metadata"]
        url = (
            f"{self.emulator.url}/apis/{group}/namespaces/{meta['namespace']}/{plural}/"
            f"{meta['name']}/status"
        )
        httpx.patch(
            url,
            json={"status": status},
            headers={"Content-Type": "application/merge-patch+json"},
        )


@pytest.fixture
def controller(emulator: RunningEmulator) -> FakeController:
    return FakeController(emulator)
