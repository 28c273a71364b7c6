"""The project's ``deploy/k8s`` overlay as a list of objects ready to apply (pure, no API calls).

``kubectl kustomize`` builds the overlay (it runs offline, and it is what a user applying by hand
runs too); taskscale then sets what comes from ``taskscale.toml`` and the command line at apply
time (namespace, HPA bounds and target) so the file and the cluster never disagree, and orders
the objects so that everything a workload references exists before the workload.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from taskscale import proc
from taskscale.config import Project
from taskscale.errors import ConfigError, MissingBinary

K8S_DIR = Path("deploy") / "k8s"
SECRETS_FILE = K8S_DIR / "base" / "secrets.env"
# The .env keys that go into the app-secrets Secret (never the local target's URLs).
SECRET_KEYS = (
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
    "REPLICATION_USER",
    "REPLICATION_PASSWORD",
    "REDIS_PASSWORD",
    "SECRET_KEY",
)


@dataclass(frozen=True)
class Kind:
    plural: str
    api_version: str
    namespaced: bool
    # Lower applies first: namespaces, then what workloads reference, then workloads.
    order: int


KINDS: dict[str, Kind] = {
    "Namespace": Kind("namespaces", "v1", False, 0),
    "ConfigMap": Kind("configmaps", "v1", True, 1),
    "Secret": Kind("secrets", "v1", True, 1),
    "Service": Kind("services", "v1", True, 2),
    "NetworkPolicy": Kind("networkpolicies", "networking.k8s.io/v1", True, 2),
    "PodDisruptionBudget": Kind("poddisruptionbudgets", "policy/v1", True, 2),
    "StatefulSet": Kind("statefulsets", "apps/v1", True, 3),
    "Job": Kind("jobs", "batch/v1", True, 4),
    "Deployment": Kind("deployments", "apps/v1", True, 5),
    "HorizontalPodAutoscaler": Kind("horizontalpodautoscalers", "autoscaling/v2", True, 6),
    "Ingress": Kind("ingresses", "networking.k8s.io/v1", True, 6),
}


def overlay_dir(project: Project, overlay: str) -> Path:
    return project.root / K8S_DIR / "overlays" / overlay


def write_secrets_file(project: Project) -> Path:
    """``deploy/k8s/base/secrets.env`` (0600, git-ignored) from the project's ``.env``."""
    secrets = project.secrets()
    missing = [key for key in SECRET_KEYS if not secrets.get(key)]
    if missing:
        raise ConfigError(
            f"{project.env_file} lacks {', '.join(missing)}",
            hint="add them (see .env.example); taskscale new generates them",
        )
    path = project.root / SECRETS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{key}={secrets[key]}\n" for key in SECRET_KEYS)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    path.chmod(0o600)
    return path


def build_overlay(project: Project, overlay: str) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of the overlay, parsed."""
    directory = overlay_dir(project, overlay)
    if not (directory / "kustomization.yaml").is_file():
        raise ConfigError(
            f"{directory} has no kustomization.yaml",
            hint="regenerate deploy/k8s with a newer taskscale (taskscale new --force)",
        )
    write_secrets_file(project)
    try:
        out = proc.run(["kubectl", "kustomize", str(directory)], timeout=60).stdout
    except MissingBinary as exc:
        raise MissingBinary(
            "kubectl is not installed: taskscale builds deploy/k8s with `kubectl kustomize`",
            hint="install kubectl (https://kubernetes.io/docs/tasks/tools/) or use "
            "`minikube kubectl` and link it as kubectl",
        ) from exc
    return parse_objects(out)


def parse_objects(text: str) -> list[dict[str, Any]]:
    objects = [doc for doc in yaml.safe_load_all(text) if doc]
    for obj in objects:
        if not isinstance(obj, dict) or "kind" not in obj or "metadata" not in obj:
            raise ConfigError("the kustomize output holds something that is not an object")
    return objects


def prepare(
    objects: list[dict[str, Any]],
    *,
    namespace: str,
    min_replicas: int,
    max_replicas: int,
    cpu_target_percent: int,
) -> list[dict[str, Any]]:
    """Copies of ``objects`` with the namespace and the HPA from config, in apply order."""
    prepared: list[dict[str, Any]] = []
    for original in objects:
        obj = copy.deepcopy(original)
        kind = obj["kind"]
        if kind not in KINDS:
            raise ConfigError(
                f"deploy/k8s produces a {kind} ({obj['metadata'].get('name')}), which "
                "taskscale does not know how to apply",
                hint=f"known kinds: {', '.join(sorted(KINDS))}",
            )
        meta = obj["metadata"]
        if kind == "Namespace":
            meta["name"] = namespace
        elif KINDS[kind].namespaced:
            meta["namespace"] = namespace
        if kind == "HorizontalPodAutoscaler":
            spec = obj["spec"]
            spec["minReplicas"] = min_replicas
            spec["maxReplicas"] = max(max_replicas, min_replicas)
            for metric in spec.get("metrics", []):
                target = metric.get("resource", {}).get("target", {})
                if "averageUtilization" in target:
                    target["averageUtilization"] = cpu_target_percent
        prepared.append(obj)
    prepared.sort(key=lambda o: KINDS[o["kind"]].order)
    return prepared
