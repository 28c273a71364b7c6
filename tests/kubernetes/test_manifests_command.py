"""`taskscale manifests`: exactly the objects `up` applies (one code path), no secret value
without --include-secrets, --out written all or nothing; and its bad input."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from taskscale.config import Project
from tests.conftest import CliRunner, one_error_line
from tests.kubernetes.conftest import APP_IMAGE, FakeController, needs_kubectl
from tests.kubernetes.emulator import RunningEmulator

pytestmark = [pytest.mark.kubernetes, needs_kubectl]
PLURALS = {
    "Namespace": "namespaces",
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "Service": "services",
    "NetworkPolicy": "networkpolicies",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "StatefulSet": "statefulsets",
    "Deployment": "deployments",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "Ingress": "ingresses",
}


def _printed(run_cli: CliRunner, project: Project, *args: str) -> list[dict[str, Any]]:
    result = run_cli("manifests", "-p", str(project.root), *args)
    assert result.exit_code == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _body(obj: dict[str, Any]) -> dict[str, Any]:
    """What was asked for: everything but the status the controllers write."""
    return {k: v for k, v in obj.items() if k not in ("status", "kind", "apiVersion")} | {
        "metadata": {k: obj["metadata"].get(k) for k in ("name", "namespace", "labels")}
    }


@pytest.mark.usefixtures("metrics_server")
def test_manifests_prints_exactly_what_up_applies(
    run_cli: CliRunner,
    k8s_project: Project,
    emulator: RunningEmulator,
    controller: FakeController,
) -> None:
    root = str(k8s_project.root)
    with controller:
        up = run_cli("up", "--target", "kubernetes", "--context", "kmock", "-p", root, "-r", "2")
    assert up.exit_code == 0, up.stderr
    printed = _printed(
        run_cli, k8s_project, "--target", "kubernetes", "-r", "2", "--include-secrets"
    )
    applied_kinds = {
        (kind, o["metadata"]["name"])
        for kind, plural in PLURALS.items()
        for o in emulator.objects(plural)
    }
    # The emulator keeps namespaces apart from other objects.
    assert "tasks-api" in emulator.emulator.namespaces
    assert printed[0]["kind"] == "Namespace" and printed[0]["metadata"]["name"] == "tasks-api"
    assert {(o["kind"], o["metadata"]["name"]) for o in printed[1:]} == applied_kinds
    for obj in printed[1:]:
        (applied,) = [
            o
            for o in emulator.objects(PLURALS[obj["kind"]])
            if o["metadata"]["name"] == obj["metadata"]["name"]
        ]
        assert _body(applied) == _body(obj), (obj["kind"], obj["metadata"]["name"])
    app = next(o for o in printed if o["kind"] == "Deployment" and o["metadata"]["name"] == "app")
    assert app["spec"]["template"]["spec"]["containers"][0]["image"] == APP_IMAGE

    # Without --include-secrets: the same objects but the Secret, and no secret value at all.
    plain = run_cli("manifests", "-p", root, "--target", "kubernetes", "-r", "2")
    assert plain.exit_code == 0, plain.stderr
    docs = [d for d in yaml.safe_load_all(plain.stdout) if d]
    assert docs == [o for o in printed if o["kind"] != "Secret"]
    env = k8s_project.secrets()
    for key in ("POSTGRES_PASSWORD", "REPLICATION_PASSWORD", "REDIS_PASSWORD", "SECRET_KEY"):
        encoded = base64.b64encode(env[key].encode()).decode()
        assert env[key] not in plain.stdout and encoded not in plain.stdout, key
    assert "no Secret included: create app-secrets" in plain.stderr
    assert "applied [images] app" in plain.stderr  # taskscale.toml overrode deploy/k8s: said


def test_manifests_follows_the_target_and_the_settings(
    run_cli: CliRunner, k8s_project: Project
) -> None:
    minikube = _printed(run_cli, k8s_project, "--target", "minikube", "-r", "3")
    kinds = {(o["kind"], o["metadata"]["name"]) for o in minikube}
    assert ("Ingress", "app") in kinds  # the minikube overlay
    production = _printed(run_cli, k8s_project)  # default: kubernetes, the production overlay
    assert ("Ingress", "app") not in {(o["kind"], o["metadata"]["name"]) for o in production}
    (hpa,) = [o for o in minikube if o["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["minReplicas"] == 3
    assert minikube[0]["kind"] == "Namespace", "printed in apply order"


def test_manifests_out_writes_one_file_per_object_all_or_nothing(
    run_cli: CliRunner, k8s_project: Project, tmp_path: Path
) -> None:
    work = tmp_path / "out"
    work.mkdir()
    out = work / "rendered"
    root = str(k8s_project.root)
    result = run_cli("manifests", "-p", root, "--out", str(out), "--include-secrets")
    assert result.exit_code == 0, result.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names[0] == "00-namespace-tasks-api.yaml"
    docs = [yaml.safe_load((out / name).read_text()) for name in names]
    assert docs == _printed(run_cli, k8s_project, "--include-secrets")
    (secret,) = [out / n for n in names if "-secret-" in n]
    assert secret.stat().st_mode & 0o777 == 0o600

    # Again without secrets: the directory is replaced, so the Secret's file is gone.
    result = run_cli("manifests", "-p", root, "--out", str(out))
    assert result.exit_code == 0, result.stderr
    assert not [p for p in out.iterdir() if "-secret-" in p.name]
    assert len(list(out.iterdir())) == len(names) - 1

    # A directory holding other files is not replaced.
    (out / "README.md").write_text("mine\n")
    before = sorted(p.name for p in out.iterdir())
    result = run_cli("manifests", "-p", root, "--out", str(out))
    assert result.exit_code == 2
    assert "holds files that are not manifests (README.md)" in one_error_line(result.stderr)
    assert sorted(p.name for p in out.iterdir()) == before

    # Unwritable: one line, exit 1, nothing left behind (no staging directory either).
    blocker = work / "a-file"
    blocker.write_text("")
    result = run_cli("manifests", "-p", root, "--out", str(blocker / "sub" / "out"))
    assert result.exit_code == 1
    assert one_error_line(result.stderr).startswith(f"error: cannot write to {blocker / 'sub'}")
    assert sorted(p.name for p in work.iterdir()) == ["a-file", "rendered"]
    result = run_cli("manifests", "-p", root, "--out", str(blocker))
    assert result.exit_code == 2
    assert "exists and is not a directory" in one_error_line(result.stderr)


def test_a_project_whose_kustomization_lost_its_image_entry(
    run_cli: CliRunner, k8s_project: Project
) -> None:
    kustomization = k8s_project.root / "deploy/k8s/base/kustomization.yaml"
    text = kustomization.read_text()
    kustomization.write_text(text.replace("- name: tasks-api-app", "- name: something-else"))
    result = run_cli("manifests", "-p", str(k8s_project.root))
    assert result.exit_code == 3
    assert one_error_line(result.stderr) == (
        "error: deploy/k8s/base/kustomization.yaml has no images: entry named tasks-api-app, "
        "through which taskscale applies [images] app (bring it back with `taskscale update`)"
    )
