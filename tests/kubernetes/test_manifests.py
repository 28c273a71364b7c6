"""deploy/k8s for every option combination: each rendered manifest and each built overlay
validates with kubernetes-validate --strict against Kubernetes 1.30 through 1.34, and
`kubectl kustomize` builds both overlays, with and without the loadtest component, from a fresh
render with no taskscale step, with the objects issues 7 and 15 list."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.kubernetes.conftest import needs_kubectl

VERSIONS = ["1.30.0", "1.31.0", "1.32.0", "1.33.0", "1.34.0"]
BROKERS = ["redis", "kafka"]
OVERLAYS = ["minikube", "production"]


def validate_all(docs: list[dict[str, Any]], where: str) -> None:
    failures = []
    for version in VERSIONS:
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                name = f"{doc['kind']}/{doc['metadata'].get('name')}"
                failures.append(f"{where} {name} @ {version}: {exc.message} at {list(exc.path)}")
    assert not failures, "\n".join(failures)


def build(project: Path, overlay: str, *components: str) -> list[dict[str, Any]]:
    """`kubectl kustomize` of an overlay as a user runs it (components enabled the way the
    component's kustomization.yaml says: listed in the overlay)."""
    directory = project / "deploy/k8s/overlays" / overlay
    if components:
        kustomization = directory / "kustomization.yaml"
        listed = "".join(f"  - ../../components/{c}\n" for c in components)
        kustomization.write_text(kustomization.read_text() + f"components:\n{listed}")
    out = subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.mark.parametrize("broker", BROKERS)
def test_every_rendered_manifest_validates_strictly(
    k8s_project_template: dict[str, Path], broker: str
) -> None:
    k8s = k8s_project_template[broker] / "deploy" / "k8s"
    files = [p for p in sorted(k8s.rglob("*.yaml")) if p.name != "kustomization.yaml"]
    assert len(files) >= 12
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
        assert docs, path
        validate_all(docs, str(path.relative_to(k8s)))


def test_strict_validation_catches_a_misspelt_field() -> None:
    bad = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"selectr": {"a": "b"}, "ports": [{"port": 80}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.30.0", strict=True)


@pytest.mark.kubernetes
@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("broker", BROKERS)
def test_overlay_builds_and_validates(
    k8s_project_template: dict[str, Path], broker: str, overlay: str, tmp_path: Path
) -> None:
    project = tmp_path / "p"
    shutil.copytree(k8s_project_template[broker], project)
    docs = build(project, overlay)
    validate_all(docs, f"{broker}/{overlay}")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    expected = {
        ("Namespace", "tasks-api"),
        ("Deployment", "app"),
        ("Service", "app"),
        ("HorizontalPodAutoscaler", "app"),
        ("PodDisruptionBudget", "app"),
        ("NetworkPolicy", "postgres"),
        ("NetworkPolicy", "redis"),
        ("StatefulSet", "postgres-primary"),
        ("StatefulSet", "postgres-standby"),
        ("Service", "postgres-primary"),
        ("Service", "postgres-standby"),
        ("Service", "postgres-rw"),
        ("Service", "postgres-ro"),
        ("StatefulSet", "redis"),
        ("Deployment", "worker"),
    }
    assert expected <= kinds
    assert (("StatefulSet", "kafka") in kinds) == (broker == "kafka")
    assert (("Ingress", "app") in kinds) == (overlay == "minikube")
    # Locust is an optional component, the migrations run in init containers (no Job), and
    # no Secret is built: the workloads reference one by name.
    assert not {k for k in kinds if k[0] in ("Job", "Secret") or "locust" in k[1]}, kinds
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
        "tasks-api"
    }
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    # Redis holds the event stream (broker = redis): durable, never evicting (issue 13).
    redis_set = by_name[("StatefulSet", "redis")]["spec"]
    (redis_container,) = redis_set["template"]["spec"]["containers"]
    args = redis_container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert [m["mountPath"] for m in redis_container["volumeMounts"] if m["name"] == "data"] == [
        "/data"
    ]
    assert [t["metadata"]["name"] for t in redis_set["volumeClaimTemplates"]] == ["data"]
    app = by_name[("Deployment", "app")]["spec"]["template"]
    worker = by_name[("Deployment", "worker")]["spec"]["template"]
    for pod in (app, worker):
        refs = [
            e["secretRef"]["name"]
            for c in [*pod["spec"]["initContainers"], *pod["spec"]["containers"]]
            for e in c.get("envFrom", [])
            if "secretRef" in e
        ]
        assert refs and set(refs) == {"app-secrets"}
        (migrate,) = pod["spec"]["initContainers"]
        assert migrate["name"] == "migrate" and migrate["command"] == ["alembic", "upgrade", "head"]
    images = set()
    for (kind, name), doc in by_name.items():
        if kind not in ("Deployment", "StatefulSet", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            images.add(container["image"])
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "limits" in container["resources"] and "requests" in container["resources"]
            if name != "kafka":
                assert sc["readOnlyRootFilesystem"] is True, name
            # $(VAR) would expand a secret into the container's argv, which `ps` shows.
            argv = " ".join([*container.get("command", []), *container.get("args", [])])
            assert "PASSWORD" not in argv.replace("$REDIS_PASSWORD", ""), (name, argv)
    # Every image pinned: the app's from [images] app (rendered from the project's version),
    # PostgreSQL's from [postgres] version, through kustomize's images: entries.
    assert "tasks-api-app:0.1.0" in images and "postgres:18" in images
    assert all(":" in i.rsplit("/", 1)[-1] and not i.endswith(":latest") for i in images), images
    assert app["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    annotations = worker["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"]
    (container,) = worker["spec"]["containers"]
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["metrics"]
    assert str(port) == annotations["prometheus.io/port"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics", probe
    standby = by_name[("StatefulSet", "postgres-standby")]["spec"]["template"]["spec"]
    assert standby["initContainers"][0]["command"][-1].endswith("standby-clone.sh")
    expected_standbys = 2 if overlay == "production" else 1
    assert by_name[("StatefulSet", "postgres-standby")]["spec"]["replicas"] == expected_standbys


@pytest.mark.kubernetes
@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_loadtest_component_adds_locust_to_an_overlay(
    k8s_project_template: dict[str, Path], overlay: str, tmp_path: Path
) -> None:
    project = tmp_path / "p"
    shutil.copytree(k8s_project_template["redis"], project)
    docs = build(project, overlay, "loadtest")
    validate_all(docs, f"loadtest/{overlay}")
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for name in ("locust-master", "locust-worker"):
        deployment = by_name[("Deployment", name)]
        assert deployment["spec"]["replicas"] == 0 and deployment["metadata"]["namespace"]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == "tasks-api-loadtest:0.1.0"  # [images] loadtest
        labels = deployment["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "taskscale"
    assert ("Service", "locust-master") in by_name


def test_standby_clone_uses_pg_basebackup_with_recovery_config(
    k8s_project_template: dict[str, Path],
) -> None:
    script = (
        k8s_project_template["redis"] / "deploy/k8s/base/postgres/standby-clone.sh"
    ).read_text()
    assert "pg_basebackup" in script and " -R " in script and "-X stream" in script
    init = (
        k8s_project_template["redis"] / "deploy/k8s/base/postgres/init-replication.sh"
    ).read_text()
    assert "WITH REPLICATION" in init and "host replication" in init


def test_secrets_never_reach_the_manifests(k8s_project_template: dict[str, Path]) -> None:
    project = k8s_project_template["redis"]
    env = dict(
        line.split("=", 1)
        for line in (project / ".env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    k8s = project / "deploy" / "k8s"
    text = "".join(p.read_text() for p in k8s.rglob("*") if p.is_file())
    for key in ("POSTGRES_PASSWORD", "REPLICATION_PASSWORD", "REDIS_PASSWORD", "SECRET_KEY"):
        assert env[key] not in text, key
    # Older templates wrote secrets there: it stays ignored so a leftover is never committed.
    assert "deploy/k8s/base/secrets.env" in (project / ".gitignore").read_text()
