"""The minikube/kubernetes target against kmock's emulator: apply, rollout waits, status, logs,
down, and the one-line errors (no kubeconfig, unknown context, unreachable API, no
metrics-server, image missing). Pods never run there: FakeController patches workload status."""

from __future__ import annotations

import base64
import shutil
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskscale import proc
from taskscale.config import Project, load_project
from taskscale.errors import ConfigError, MissingBinary, ServiceNotReady, TargetError, UsageError
from taskscale.targets import get_target
from taskscale.targets.kube import rollout
from taskscale.targets.kube.target import KubernetesTarget
from tests.conftest import CliRunner
from tests.kubernetes.conftest import APP_IMAGE, APPLY, FakeController, needs_kubectl
from tests.kubernetes.emulator import RunningEmulator

pytestmark = [pytest.mark.kubernetes, needs_kubectl]
PVC = "data-postgres-primary-0"


def _in_registry(argv: list[str], *, timeout: float, check: bool = True) -> proc.Completed:
    """The registry query of the image check: every image is there."""
    assert argv[:3] == ["docker", "manifest", "inspect"] and timeout > 0
    return proc.Completed(tuple(argv), 0, "{}", "")


def target(project: Project, flavor: str = "kubernetes", **kwargs: Any) -> KubernetesTarget:
    kwargs.setdefault("runner", _in_registry)
    return KubernetesTarget(project, flavor, context="kmock", poll_interval=0.05, **kwargs)  # type: ignore[arg-type]


def add_pod(emulator: RunningEmulator, name: str, labels: dict[str, str], **status: Any) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "tasks-api", "labels": labels},
        "spec": {"containers": [{"name": "main", "image": "tasks-api-app:latest"}]},
        "status": status,
    }
    url = f"{emulator.url}/api/v1/namespaces/tasks-api/pods/{name}"
    httpx.patch(url, json=body, headers=APPLY).raise_for_status()


@pytest.mark.usefixtures("metrics_server")
def test_up_applies_the_overlay_and_waits_for_every_rollout(
    k8s_project: Project, emulator: RunningEmulator, controller: FakeController
) -> None:
    steps: list[str] = []
    with controller:
        status = target(k8s_project).up(2, on_step=steps.append)

    deployments = {o["metadata"]["name"]: o for o in emulator.objects("deployments")}
    assert set(deployments) == {"app", "worker"}  # Locust is an optional component
    assert "replicas" not in deployments["app"]["spec"], "the HPA owns the app's replica count"
    for name in ("app", "worker"):  # they migrate before they serve: no Job to order
        pod = deployments[name]["spec"]["template"]["spec"]
        assert [c["name"] for c in pod["initContainers"]] == ["migrate"]
        # [images] app of taskscale.toml, applied through kustomize's images: entry.
        assert {c["image"] for c in [*pod["initContainers"], *pod["containers"]]} == {APP_IMAGE}
    statefulsets = {o["metadata"]["name"] for o in emulator.objects("statefulsets")}
    assert statefulsets == {"postgres-primary", "postgres-standby", "redis"}  # no kafka
    assert emulator.objects("jobs") == []
    assert "tasks-api" in emulator.emulator.namespaces
    for plural in ("deployments", "statefulsets", "services", "configmaps", "secrets"):
        for obj in emulator.objects(plural):
            assert obj["metadata"]["namespace"] == "tasks-api"
    (hpa,) = emulator.objects("horizontalpodautoscalers")
    assert hpa["spec"]["minReplicas"] == 2
    assert hpa["spec"]["maxReplicas"] == k8s_project.config.kubernetes.hpa_max_replicas
    # The Secret the workloads name, made from .env; nothing is written into the project.
    (secret,) = emulator.objects("secrets")
    assert secret["metadata"]["name"] == "app-secrets"
    env = k8s_project.secrets()
    for key in ("POSTGRES_PASSWORD", "REPLICATION_PASSWORD", "REDIS_PASSWORD", "SECRET_KEY"):
        assert base64.b64decode(secret["data"][key]).decode() == env[key]
    assert not list((k8s_project.root / "deploy").rglob("*.env"))

    assert any(s.startswith("applying deployment/app") for s in steps)
    assert any(s.startswith("waiting for") for s in steps), "rollout progress is reported"
    assert status.target == "kubernetes"
    by_name = {s.name: s for s in status.services}
    assert by_name["postgres-primary"].kind == "postgres"
    assert by_name["worker"].healthy and by_name["worker"].state == "running"
    assert any(note.startswith("autoscaler app:") for note in status.notes)
    # taskscale.toml's image differs from what deploy/k8s was rendered with: said, not silent.
    assert any(
        "deploy/k8s/base/kustomization.yaml sets tasks-api-app to tasks-api-app:0.1.0; "
        f"applied [images] app = {APP_IMAGE}" in note
        for note in status.notes
    ), status.notes
    assert status.endpoints.extra["port-forward"].startswith("kubectl -n tasks-api")


@pytest.mark.usefixtures("metrics_server")
def test_up_server_side_applies_with_one_field_manager(
    k8s_project: Project, emulator: RunningEmulator, controller: FakeController
) -> None:
    with controller:
        target(k8s_project).up(1)
        target(k8s_project).up(3)
    patches = [
        r
        for r in emulator.requests()
        if str(r.method).upper().endswith("PATCH")
        and "apiservices" not in r.url.path  # the fixture's metrics-server
        and r.headers.get("Content-Type", "").startswith("application/apply-patch")
    ]
    assert patches and all(
        r.params == {"fieldManager": "taskscale", "force": "true"} for r in patches
    )
    assert all(r.headers.get("Authorization") == "Bearer test-token" for r in patches)
    deletes = [r for r in emulator.requests() if str(r.method).upper().endswith("DELETE")]
    assert deletes == [], "re-applying replaces nothing (no immutable Job in the manifests)"
    (hpa,) = emulator.objects("horizontalpodautoscalers")
    assert hpa["spec"]["minReplicas"] == 3


@pytest.mark.usefixtures("metrics_server")
def test_up_times_out_naming_what_is_not_ready(
    k8s_project: Project, emulator: RunningEmulator
) -> None:
    add_pod(
        emulator,
        "app-1",
        {"app.kubernetes.io/name": "app"},
        phase="Pending",
        initContainerStatuses=[
            {
                "name": "migrate",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
            }
        ],
    )
    with pytest.raises(ServiceNotReady) as info:
        target(k8s_project).up(1)
    message = info.value.message
    assert "within 6s" in message and "app 0/1" in message and "worker 0/1" in message
    assert info.value.detail is not None and "app-1/migrate: CrashLoopBackOff" in info.value.detail
    assert info.value.hint is not None
    assert "taskscale logs migrate --target kubernetes" in info.value.hint


@pytest.mark.usefixtures("metrics_server")
def test_an_image_the_cluster_cannot_pull_fails_at_once(
    k8s_project: Project, emulator: RunningEmulator
) -> None:
    add_pod(
        emulator,
        "app-1",
        {"app.kubernetes.io/name": "app"},
        phase="Pending",
        containerStatuses=[
            {
                "name": "main",
                "image": "tasks-api-app:latest",
                "state": {"waiting": {"reason": "ImagePullBackOff"}},
            }
        ],
    )
    with pytest.raises(TargetError) as info:
        target(k8s_project).up(1)
    assert "image tasks-api-app:latest is not available to the cluster" in info.value.message
    assert info.value.hint is not None and "registry" in info.value.hint


def test_missing_metrics_server_is_one_line_with_the_fix(
    k8s_project: Project, emulator: RunningEmulator
) -> None:
    with pytest.raises(TargetError) as info:
        target(k8s_project).up(1)
    assert "metrics-server is not installed" in info.value.message
    assert info.value.hint is not None and "metrics-server" in info.value.hint
    assert emulator.objects("deployments") == [], "nothing is applied before the checks pass"


def test_no_kubeconfig(
    k8s_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(TargetError) as info:
        target(k8s_project).status()
    assert info.value.message.startswith("no kubeconfig found at")
    assert info.value.hint is not None and "minikube start" in info.value.hint


def test_unknown_context(k8s_project: Project, emulator: RunningEmulator) -> None:
    stack = KubernetesTarget(k8s_project, "kubernetes", context="prod-eu")
    with pytest.raises(TargetError) as info:
        stack.status()
    assert info.value.message == "unknown kube context 'prod-eu' (known: kmock)"


def test_unreachable_api(k8s_project: Project, emulator: RunningEmulator, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    emulator.url = f"http://127.0.0.1:{port}"  # a port nothing listens on
    emulator.write_kubeconfig(tmp_path / "kubeconfig")
    with pytest.raises(TargetError) as info:
        target(k8s_project).status()
    assert info.value.message.startswith(
        f"cannot reach the Kubernetes API at http://127.0.0.1:{port}"
    )


def _minikube(outputs: dict[str, tuple[int, str]]) -> Any:
    def run(argv: list[str], *, timeout: float, check: bool = True) -> proc.Completed:
        assert argv[0] == "minikube" and timeout > 0
        code, out = outputs[argv[1]]
        return proc.Completed(tuple(argv), code, out, "")

    return run


def test_minikube_not_running(k8s_project: Project, emulator: RunningEmulator) -> None:
    runner = _minikube({"status": (7, "Stopped/Stopped")})
    with pytest.raises(TargetError) as info:
        target(k8s_project, "minikube", runner=runner).up(1)
    assert info.value.message == "minikube is not running (status: Stopped/Stopped)"


@pytest.mark.usefixtures("metrics_server")
def test_minikube_image_not_loaded(k8s_project: Project, emulator: RunningEmulator) -> None:
    runner = _minikube(
        {"status": (0, "Running/Running"), "image": (0, "docker.io/library/redis:7.4-alpine\n")}
    )
    with pytest.raises(TargetError) as info:
        target(k8s_project, "minikube", runner=runner).up(1)
    assert info.value.message == f"image {APP_IMAGE} is not in the minikube cluster"
    assert info.value.hint == (
        f"build it into minikube's engine: `minikube -p kmock image build -t {APP_IMAGE} "
        "-f deploy/Dockerfile .` in the project's root"
    )


@pytest.mark.usefixtures("metrics_server")
def test_minikube_up_uses_the_minikube_overlay_and_ingress(
    k8s_project: Project, emulator: RunningEmulator, controller: FakeController
) -> None:
    runner = _minikube(
        {
            "status": (0, "Running/Running"),
            "image": (0, f"{APP_IMAGE}\n"),
            "ip": (0, "192.168.49.2\n"),
        }
    )
    with controller:
        status = target(k8s_project, "minikube", runner=runner).up(1)
    assert status.target == "minikube"
    assert status.endpoints.api == "http://192.168.49.2/"
    assert [o["metadata"]["name"] for o in emulator.objects("ingresses")] == ["app"]


def test_status_of_a_stack_that_is_not_up(k8s_project: Project, emulator: RunningEmulator) -> None:
    status = target(k8s_project).status()
    assert status.services == [] and not status.running
    assert status.notes == ["namespace tasks-api does not exist in context kmock"]


def test_a_json_request_answered_with_text_is_one_line(
    k8s_project: Project, emulator: RunningEmulator
) -> None:
    add_pod(emulator, "app-a", {"app.kubernetes.io/name": "app"}, phase="Running")
    path = "/api/v1/namespaces/tasks-api/pods/app-a/log"
    emulator.call(lambda: emulator.emulator[f"get {path}"] << b"<html>" + b"x" * 200)
    api = target(k8s_project).api
    with pytest.raises(TargetError) as info:
        api.request("GET", path)
    message = info.value.message
    assert message.startswith(f"GET {path}: the Kubernetes API at {api.server} (context kmock)")
    assert message.endswith(f"not JSON: '<html>{'x' * 74}'")
    assert info.value.hint is not None and "kubectl cluster-info" in info.value.hint


@pytest.mark.usefixtures("metrics_server")
def test_down_deletes_the_namespace_and_waits_until_it_is_gone(
    k8s_project: Project, emulator: RunningEmulator, controller: FakeController
) -> None:
    with controller:
        target(k8s_project).up(1)
    emulator.emulator.terminating_gets = 3
    steps: list[str] = []
    result = target(k8s_project).down(purge=True, on_step=steps.append)
    assert result.purged and "app" in result.stopped and "postgres-primary" in result.stopped
    assert "tasks-api" not in emulator.emulator.namespaces
    assert steps[-1] == "waiting for namespace tasks-api to be gone"
    again = target(k8s_project).down()
    assert again.stopped == [] and not again.purged, "down is safe to repeat"


@pytest.mark.usefixtures("metrics_server")
def test_down_without_purge_keeps_the_volumes(
    k8s_project: Project, emulator: RunningEmulator, controller: FakeController
) -> None:
    """``down`` means the same on every target: stop everything, keep the data."""
    with controller:
        target(k8s_project).up(1)
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": PVC, "namespace": "tasks-api"},
        "spec": {"accessModes": ["ReadWriteOnce"]},
    }
    url = f"{emulator.url}/api/v1/namespaces/tasks-api/persistentvolumeclaims/{PVC}"
    httpx.patch(url, json=pvc, headers=APPLY).raise_for_status()
    # Not taskscale's (every namespace gets one): down leaves it alone.
    foreign = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kube-root-ca.crt", "namespace": "tasks-api"},
    }
    url = f"{emulator.url}/api/v1/namespaces/tasks-api/configmaps/kube-root-ca.crt"
    httpx.patch(url, json=foreign, headers=APPLY).raise_for_status()
    steps: list[str] = []
    result = target(k8s_project).down(on_step=steps.append)
    assert not result.purged and "app" in result.stopped and "postgres-primary" in result.stopped
    for plural in ("deployments", "statefulsets", "jobs", "services", "secrets"):
        assert emulator.objects(plural) == [], plural
    assert [o["metadata"]["name"] for o in emulator.objects("configmaps")] == ["kube-root-ca.crt"]
    assert "tasks-api" in emulator.emulator.namespaces
    assert [o["metadata"]["name"] for o in emulator.objects("persistentvolumeclaims")] == [PVC]
    assert "deleting deployment/app" in steps
    assert target(k8s_project).status().services == []
    purged = target(k8s_project).down(purge=True)
    assert purged.purged and "tasks-api" not in emulator.emulator.namespaces


@pytest.mark.usefixtures("metrics_server")
def test_down_times_out_on_a_stuck_namespace(
    k8s_project: Project, emulator: RunningEmulator, controller: FakeController
) -> None:
    with controller:
        target(k8s_project).up(1)
    emulator.emulator.terminating_gets = -1
    with pytest.raises(TargetError) as info:
        target(k8s_project).down(purge=True)
    assert info.value.message == "namespace tasks-api is still terminating after 6s"


@pytest.mark.usefixtures("metrics_server")
def test_logs_of_a_component(
    k8s_project: Project, emulator: RunningEmulator, controller: FakeController
) -> None:
    with controller:
        target(k8s_project).up(1)
    for name in ("app-a", "app-b"):
        add_pod(emulator, name, {"app.kubernetes.io/name": "app"}, phase="Running")
        path = f"get /api/v1/namespaces/tasks-api/pods/{name}/log"
        text = f"{name} started\n{name} ready\n".encode()
        emulator.call(lambda p=path, t=text: emulator.emulator[p] << t)
    lines = list(target(k8s_project).logs("app", tail=10, follow=False))
    assert lines == [
        "app-a | app-a started",
        "app-a | app-a ready",
        "app-b | app-b started",
        "app-b | app-b ready",
    ]
    (request,) = [r for r in emulator.requests() if r.url.path.endswith("/app-a/log")]
    assert request.params == {"container": "main", "tailLines": "10"}
    followed = list(target(k8s_project).logs("app-b", tail=5, follow=True))
    assert followed == ["app-b started", "app-b ready"]
    # -f over a component: every pod's stream, interleaved, each line prefixed with its pod.
    both = list(target(k8s_project).logs("app", tail=3, follow=True))
    assert sorted(both) == sorted(lines)
    for pod in ("app-a", "app-b"):
        assert [x for x in both if x.startswith(pod)] == [
            f"{pod} | {pod} started",
            f"{pod} | {pod} ready",
        ]
    streams = [r for r in emulator.requests() if r.params.get("follow") == "true"]
    assert {r.url.path.rsplit("/", 2)[1] for r in streams if r.params["tailLines"] == "3"} == {
        "app-a",
        "app-b",
    }
    with pytest.raises(UsageError, match="unknown component 'nginx'"):
        list(target(k8s_project).logs("nginx", tail=10, follow=False))


def test_get_target_names_and_context(k8s_project: Project) -> None:
    assert get_target("minikube", k8s_project).name == "minikube"
    stack = get_target("kubernetes", k8s_project, context="other")
    assert isinstance(stack, KubernetesTarget) and stack.context == "other"
    with pytest.raises(UsageError, match="--context applies to"):
        get_target("local", k8s_project, context="other")


@pytest.mark.usefixtures("metrics_server")
def test_cli_up_status_down(
    run_cli: CliRunner,
    k8s_project: Project,
    emulator: RunningEmulator,
    controller: FakeController,
) -> None:
    root = str(k8s_project.root)
    with controller:
        up = run_cli("up", "--target", "kubernetes", "--context", "kmock", "-p", root, "-r", "2")
    assert up.exit_code == 0, up.stderr
    assert "pods" in up.stdout and "postgres-primary" in up.stdout
    status = run_cli("status", "--target", "kubernetes", "--context", "kmock", "-p", root, "--json")
    assert status.exit_code == 0 and '"desired": 1' in status.stdout
    down = run_cli("down", "--target", "kubernetes", "--context", "kmock", "-p", root)
    assert down.exit_code == 0 and "stopped: app" in down.stderr


def test_cli_error_is_one_line(
    run_cli: CliRunner, k8s_project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    result = run_cli("status", "--target", "minikube", "-p", str(k8s_project.root))
    assert result.exit_code == 6
    assert result.stderr.strip().count("\n") == 0 and "no kubeconfig found" in result.stderr


@pytest.mark.usefixtures("metrics_server")
def test_kafka_projects_also_wait_for_the_broker(
    k8s_project_template: dict[str, Path],
    tmp_path: Path,
    emulator: RunningEmulator,
    controller: FakeController,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "tasks-api"
    shutil.copytree(k8s_project_template["kafka"], root)
    steps: list[str] = []
    kafka_target = target(load_project(root))
    waited: list[str] = []
    wait_rollouts = kafka_target.wait_rollouts

    def spy(*args: Any, **kwargs: Any) -> list[rollout.Progress]:
        states = wait_rollouts(*args, **kwargs)
        waited.extend(s.name for s in states)
        return states

    monkeypatch.setattr(kafka_target, "wait_rollouts", spy)
    with controller:
        status = kafka_target.up(1, on_step=steps.append)
    assert {o["metadata"]["name"] for o in emulator.objects("statefulsets")} == {
        "kafka",
        "postgres-primary",
        "postgres-standby",
        "redis",
    }
    assert {s.name: s.kind for s in status.services}["kafka"] == "kafka"
    assert "kafka" in waited, "the rollout wait reads the kafka StatefulSet"
    # It lists the workloads (three requests a poll), never one GET per workload.
    assert not [
        r
        for r in emulator.requests()
        if str(r.method).upper().endswith("GET")
        and r.url.path == "/apis/apps/v1/namespaces/tasks-api/statefulsets/kafka"
    ]
    assert "applying statefulset/kafka" in steps


def test_replicas_above_the_autoscaler_maximum(k8s_project: Project) -> None:
    with pytest.raises(UsageError) as info:
        target(k8s_project).up(11)
    assert info.value.message == "--replicas 11 is above the autoscaler's maximum of 10"
    assert info.value.hint == "raise [kubernetes] hpa_max_replicas in taskscale.toml"


def test_a_project_without_deploy_k8s(k8s_project: Project) -> None:
    shutil.rmtree(k8s_project.root / "deploy" / "k8s")
    with pytest.raises(ConfigError, match=r"has no kustomization\.yaml"):
        target(k8s_project).up(1)


def test_kubectl_missing(k8s_project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MissingBinary) as info:
        target(k8s_project).up(1)
    assert info.value.message.startswith("kubectl is not installed")


def test_logs_of_a_stack_that_is_not_up(
    run_cli: CliRunner, k8s_project: Project, emulator: RunningEmulator
) -> None:
    args = ["logs", "--target", "kubernetes", "--context", "kmock", "-p", str(k8s_project.root)]
    result = run_cli(*args)
    assert result.exit_code == 6
    assert result.stderr.strip().startswith(
        "error: the stack is not running: namespace tasks-api does not exist"
    )
    assert result.stdout == ""


@pytest.mark.usefixtures("metrics_server")
def test_logs_migrate_reads_the_init_containers(
    run_cli: CliRunner, k8s_project: Project, emulator: RunningEmulator, controller: FakeController
) -> None:
    """`up` names `taskscale logs migrate` when the migrations fail: it reads the `migrate` init
    container of every app and worker pod."""
    with controller:
        target(k8s_project).up(1)
    for name, component in (("app-a", "app"), ("worker-a", "worker")):
        add_pod(emulator, name, {"app.kubernetes.io/name": component}, phase="Pending")
        path = f"get /api/v1/namespaces/tasks-api/pods/{name}/log"
        emulator.call(
            lambda p=path, n=name: emulator.emulator[p] << f"{n}: upgrade head\n".encode()
        )
    args = ["--target", "kubernetes", "--context", "kmock", "-p", str(k8s_project.root)]
    result = run_cli("logs", "migrate", "--tail", "7", *args)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "app-a/migrate | app-a: upgrade head",
        "worker-a/migrate | worker-a: upgrade head",
    ]
    reads = [r for r in emulator.requests() if r.url.path.endswith("/log")]
    assert {r.params["container"] for r in reads} == {"migrate"}
    unknown = run_cli("logs", "nosuch", *args)
    assert unknown.exit_code == 2
    assert unknown.stderr.strip().endswith(
        "choose one of app, clone-primary, migrate, postgres-primary, postgres-standby, redis, "
        "worker"
    )


@pytest.mark.usefixtures("metrics_server")
def test_logs_of_a_job_without_a_selector(
    k8s_project: Project, emulator: RunningEmulator, controller: FakeController
) -> None:
    """A Job read back without spec.selector (the emulator; real API servers add one) is read
    through its pod template's labels: no KeyError."""
    with controller:
        target(k8s_project).up(1)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "backfill", "namespace": "tasks-api"},
        "spec": {
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "backfill"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "x"}]},
            }
        },
    }
    url = f"{emulator.url}/apis/batch/v1/namespaces/tasks-api/jobs/backfill"
    httpx.patch(url, json=job, headers=APPLY).raise_for_status()
    add_pod(emulator, "backfill-x", {"app.kubernetes.io/name": "backfill"}, phase="Running")
    path = "get /api/v1/namespaces/tasks-api/pods/backfill-x/log"
    emulator.call(lambda: emulator.emulator[path] << b"done\n")
    assert list(target(k8s_project).logs("backfill", tail=5, follow=False)) == ["done"]
