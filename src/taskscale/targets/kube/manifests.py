"""The project's ``deploy/k8s`` as the list of objects ``up`` applies and ``manifests`` prints.

One code path for both (``render``): ``kubectl kustomize`` builds the overlay (it runs offline,
and it is what a user applying by hand or a GitOps tool runs), from a copy of ``deploy/k8s`` in
which taskscale.toml's image settings are set through kustomize's own ``images:`` entries (what
``kustomize edit set image`` does), so the project's files are never written; then the namespace
and the HPA come from taskscale.toml and the command line, and the Secret ``app-secrets`` is made
from ``.env`` only when asked (``up`` always asks; ``manifests`` only with --include-secrets).
The manifests hold no secret: workloads reference that Secret by name.
"""

from __future__ import annotations

import base64
import copy
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from taskscale import proc
from taskscale.config import Project
from taskscale.errors import ConfigError, MissingBinary, TaskscaleError, UsageError

K8S_DIR = Path("deploy") / "k8s"
KUSTOMIZATION = "kustomization.yaml"
# What `up --target NAME` and `manifests --target NAME` build.
OVERLAYS = {"minikube": "minikube", "kubernetes": "production"}
LOADTEST_COMPONENT = "loadtest"
SECRET_NAME = "app-secrets"  # noqa: S105 - a name, not a secret
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
MANAGED = {"app.kubernetes.io/managed-by": "taskscale"}
PG_SETTING = "[postgres] version"
KUSTOMIZE_TIMEOUT_S = 60.0


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


@dataclass(frozen=True)
class ImageRef:
    """``[registry/]name[:tag][@digest]`` split the way kustomize's ``images:`` wants it."""

    name: str
    tag: str = ""
    digest: str = ""

    @classmethod
    def parse(cls, reference: str) -> ImageRef:
        rest, _, digest = reference.partition("@")
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            return cls(rest[:colon], rest[colon + 1 :], digest)
        return cls(rest, "", digest)

    def __str__(self) -> str:
        return (
            self.name
            + (f":{self.tag}" if self.tag else "")
            + (f"@{self.digest}" if self.digest else "")
        )

    @property
    def pinned(self) -> bool:
        """A digest, or a tag other than ``latest``: every node runs the same build."""
        return bool(self.digest) or self.tag not in ("", "latest")


@dataclass
class Rendered:
    """The objects to apply, in order, and what taskscale.toml changed in deploy/k8s."""

    objects: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    @property
    def includes_secrets(self) -> bool:
        return any(o["kind"] == "Secret" for o in self.objects)


def overlay_dir(project: Project, overlay: str) -> Path:
    return project.root / K8S_DIR / "overlays" / overlay


def render(
    project: Project,
    overlay: str,
    *,
    min_replicas: int,
    include_secrets: bool,
    components: Sequence[str] = (),
) -> Rendered:
    """Every object ``up`` applies for ``overlay`` (plus ``components``), ready to apply."""
    directory = overlay_dir(project, overlay)
    if not (directory / KUSTOMIZATION).is_file():
        raise ConfigError(
            f"{directory} has no {KUSTOMIZATION}",
            hint="bring deploy/k8s back with `taskscale update`",
        )
    config = project.config
    secret = secret_object(project) if include_secrets else None
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="taskscale-k8s-") as tmp:
        work = Path(tmp)
        k8s = work / "k8s"
        try:
            shutil.copytree(project.root / K8S_DIR, k8s, ignore=shutil.ignore_patterns("*.env"))
        except (OSError, shutil.Error) as exc:
            raise TaskscaleError(f"cannot read {project.root / K8S_DIR}: {exc}") from exc
        name = config.project.name
        settings = [
            (k8s / "base", f"{name}-app", ImageRef.parse(config.images.app), "[images] app"),
            (k8s / "base", "postgres", ImageRef("", str(config.postgres.version)), PG_SETTING),
        ]
        for component in components:
            path = k8s / "components" / component
            if not (path / KUSTOMIZATION).is_file():
                raise ConfigError(
                    f"deploy/k8s/components/{component} is missing",
                    hint="bring it back with `taskscale update`",
                )
            if component == LOADTEST_COMPONENT:
                if not config.images.loadtest:
                    raise ConfigError(
                        "[images] loadtest is not set in taskscale.toml: in-cluster load tests "
                        "run the app image built with Locust",
                        hint="build it (docker build -f deploy/Dockerfile --build-arg "
                        f"EXTRAS=loadtest -t {name}-loadtest:TAG .) and set [images] loadtest",
                    )
                ref = ImageRef.parse(config.images.loadtest)
                settings.append((path, f"{name}-loadtest", ref, "[images] loadtest"))
        for folder, image, ref, setting in settings:
            where = (K8S_DIR / folder.relative_to(k8s) / KUSTOMIZATION).as_posix()
            notes += set_image(folder / KUSTOMIZATION, where, image, ref, setting)
        wrapper: dict[str, Any] = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [f"k8s/overlays/{overlay}"],
        }
        if components:
            wrapper["components"] = [f"k8s/components/{c}" for c in components]
        (work / KUSTOMIZATION).write_text(yaml.safe_dump(wrapper), encoding="utf-8")
        objects = parse_objects(kustomize(work))
    if secret is not None:
        objects.append(secret)
    settings_k8s = config.kubernetes
    prepared = prepare(
        objects,
        namespace=settings_k8s.namespace,
        min_replicas=min_replicas,
        max_replicas=settings_k8s.hpa_max_replicas,
        cpu_target_percent=settings_k8s.cpu_target_percent,
    )
    return Rendered(prepared, notes)


def set_image(
    kustomization: Path, where: str, image: str, ref: ImageRef, setting: str
) -> list[str]:
    """Set the ``images:`` entry named ``image`` of ``kustomization`` (a copy) to ``ref`` (an
    empty ``ref.name`` keeps the entry's name); a note when the file said otherwise."""
    text = kustomization.read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    entries = data.get("images") or []
    entry = next((e for e in entries if isinstance(e, dict) and e.get("name") == image), None)
    if entry is None:
        raise ConfigError(
            f"{where} has no images: entry named {image}, through which "
            f"taskscale applies {setting}",
            hint="bring it back with `taskscale update`",
        )
    before = ImageRef(
        str(entry.get("newName") or image),
        str(entry.get("newTag") or ""),
        str(entry.get("digest") or ""),
    )
    wanted = ImageRef(ref.name or before.name, ref.tag, ref.digest)
    for key in ("newName", "newTag", "digest"):
        entry.pop(key, None)
    if wanted.name != image:
        entry["newName"] = wanted.name
    if wanted.tag:
        entry["newTag"] = wanted.tag
    if wanted.digest:
        entry["digest"] = wanted.digest
    kustomization.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    if before == wanted:
        return []
    return [
        f"{where} sets {image} to {before}; applied {setting} = {wanted} from "
        "taskscale.toml (kubectl kustomize by hand gives the former: make them the same)"
    ]


def kustomize(directory: Path) -> str:
    try:
        done = proc.run(["kubectl", "kustomize", str(directory)], timeout=KUSTOMIZE_TIMEOUT_S)
    except MissingBinary as exc:
        raise MissingBinary(
            "kubectl is not installed: taskscale builds deploy/k8s with `kubectl kustomize`",
            hint="install kubectl (https://kubernetes.io/docs/tasks/tools/) or use "
            "`minikube kubectl` and link it as kubectl",
        ) from exc
    return done.stdout


def secret_object(project: Project) -> dict[str, Any]:
    """The Secret the workloads read, from the project's ``.env``."""
    secrets = project.secrets()
    missing = [key for key in SECRET_KEYS if not secrets.get(key)]
    if missing:
        raise ConfigError(
            f"{project.env_file} lacks {', '.join(missing)}",
            hint="add them (see .env.example); taskscale new generates them",
        )
    labels = {"app.kubernetes.io/part-of": project.config.project.name, **MANAGED}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET_NAME, "labels": labels},
        "type": "Opaque",
        "data": {
            key: base64.b64encode(secrets[key].encode()).decode("ascii") for key in SECRET_KEYS
        },
    }


def workload_images(objects: Iterable[dict[str, Any]], names: Iterable[str]) -> list[str]:
    """The images (containers and init containers) of the workloads called ``names``."""
    wanted = set(names)
    found: set[str] = set()
    for obj in objects:
        if obj["metadata"]["name"] not in wanted or "template" not in obj.get("spec", {}):
            continue
        pod = obj["spec"]["template"]["spec"]
        for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            found.add(str(container.get("image", "")))
    return sorted(found)


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


def to_yaml(objects: Iterable[dict[str, Any]]) -> str:
    """Objects as one multi-document YAML stream, in apply order."""
    return yaml.safe_dump_all(list(objects), sort_keys=False, width=120)


def file_names(objects: Sequence[dict[str, Any]]) -> list[str]:
    """``NN-kind-name.yaml`` per object: ``kubectl apply -f DIR`` reads them in apply order."""
    width = max(2, len(str(len(objects))))
    return [
        f"{i:0{width}d}-{o['kind'].lower()}-{o['metadata']['name']}.yaml"
        for i, o in enumerate(objects)
    ]


def write_dir(objects: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """One file per object in ``out``, all or nothing: written into a staging directory next
    to ``out``, then swapped in. An ``out`` holding anything but YAML files (not a previous
    output) is refused, so nothing of the user's is replaced."""
    out = out.expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if out.is_dir():
        foreign = sorted(
            p.name for p in out.iterdir() if not p.name.endswith(".yaml") or p.is_dir()
        )
        if foreign:
            raise UsageError(
                f"--out {out} holds files that are not manifests ({', '.join(foreign[:3])}): "
                "taskscale replaces the directory's contents",
                hint="choose a new or empty directory, or one a previous --out wrote",
            )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise TaskscaleError(f"cannot write to {out.parent}: {exc.strerror}") from exc
    old: Path | None = None
    try:
        for name, obj in zip(file_names(objects), objects, strict=True):
            # A Secret (--include-secrets) is readable by its owner only, like .env.
            mode = 0o600 if obj["kind"] == "Secret" else 0o644
            fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(to_yaml([obj]))
        staging.chmod(0o755)
        if out.exists():
            old = out.with_name(f"{staging.name}.old")
            os.rename(out, old)
        try:
            os.rename(staging, out)
        except OSError:
            if old is not None:
                os.rename(old, out)
                old = None
            raise
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise TaskscaleError(f"cannot write the manifests to {out}: {exc.strerror}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return sorted(out.iterdir())
