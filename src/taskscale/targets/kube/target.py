"""The minikube and kubernetes targets: the project's ``deploy/k8s`` overlay on a cluster.

``up`` builds the overlay (``minikube`` or ``production``) through ``manifests.render``, the code
path ``taskscale manifests`` prints, checks the cluster can run it (context, API, metrics-server
for the HPA, and that the built app image is pinned and loaded into Minikube or in a registry),
server-side applies every object with one field manager, then waits for each rollout (the app
and worker pods migrate first, in their init containers). ``down`` deletes what ``up``
applied and keeps the PostgreSQL and Redis volumes (PersistentVolumeClaims); ``down --purge``
deletes the whole namespace, volumes included, and waits until it is gone.
``loadtest`` runs Locust as Jobs in the namespace (``kube/loadgen.py``); replication offers only
its status, read from each PostgreSQL pod through pod exec (``kube/replication.py``): promotion
is not automated here.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from taskscale import proc
from taskscale.config import Project
from taskscale.errors import (
    ConfigError,
    MissingBinary,
    ServiceNotReady,
    TargetError,
    UsageError,
)
from taskscale.targets.base import Target, validate_replicas
from taskscale.targets.capabilities import FaultInjector, Replication, TelemetrySource
from taskscale.targets.kube import manifests, rollout
from taskscale.targets.kube.api import KubeApi, KubeApiError, object_path
from taskscale.targets.kube.namespace import Namespace
from taskscale.targets.kube.preflight import ClusterChecks, Runner
from taskscale.targets.logstream import LogStream
from taskscale.targets.model import (
    DownResult,
    Endpoints,
    PodsDetail,
    ServiceKind,
    ServiceStatus,
    StackStatus,
    StepCallback,
    no_steps,
)

if TYPE_CHECKING:
    from taskscale.loadgen.job import LoadGenerator

Flavor = Literal["minikube", "kubernetes"]
POLL_INTERVAL = 1.0
# deploy/k8s labels every object it makes (kustomization.yaml `labels`).
MANAGED_LABEL = "app.kubernetes.io/managed-by"
MANAGED = f"{MANAGED_LABEL}=taskscale"
# `logs -f` keeps one streaming request per pod open: past this, name the pod.
MAX_FOLLOWED_PODS = 20
# The workloads that run the project's own image (built from deploy/Dockerfile).
BUILT_WORKLOADS = ("app", "worker")

_KIND_OF_COMPONENT: dict[str, ServiceKind] = {
    "app": "app",
    "worker": "worker",
    "redis": "redis",
    "kafka": "kafka",
    "migrate": "job",
}


def _service_kind(name: str) -> ServiceKind:
    if name.startswith("postgres"):
        return "postgres"
    if name.startswith("locust"):
        return "loadtest"
    return _KIND_OF_COMPONENT.get(name, "app")


class KubernetesTarget(Target):
    """A stack on a Kubernetes cluster reached through a kubeconfig context."""

    guide = "docs/kubernetes.md"

    def __init__(
        self,
        project: Project,
        flavor: Flavor = "kubernetes",
        *,
        context: str | None = None,
        runner: Runner = proc.run,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self.project = project
        self.name = flavor
        self.flavor = flavor
        settings = project.config.kubernetes
        self.namespace = settings.namespace
        default_context = "minikube" if flavor == "minikube" else None
        self.context = context or settings.context or default_context
        self.overlay = manifests.OVERLAYS[flavor]
        self.checks = ClusterChecks(flavor, self.context, runner)
        self._poll = poll_interval
        self._ns: Namespace | None = None

    # ------------------------------------------------------------------ plumbing

    @property
    def ns(self) -> Namespace:
        """The stack's namespace (the API client is created, and the kubeconfig read, once)."""
        if self._ns is None:
            self._ns = Namespace(KubeApi(self.context), self.namespace)
        return self._ns

    @property
    def api(self) -> KubeApi:
        return self.ns.api

    # ------------------------------------------------------------------ up

    def up(self, replicas: int, on_step: StepCallback = no_steps) -> StackStatus:
        settings = self.project.config.kubernetes
        validate_replicas(
            replicas,
            settings.hpa_max_replicas,
            setting="[kubernetes] hpa_max_replicas",
            maximum="the autoscaler's maximum",
        )
        on_step(f"building deploy/k8s/overlays/{self.overlay}")
        rendered = self.manifests(replicas, include_secrets=True)
        objects = rendered.objects
        on_step(f"checking the cluster (context {self.context or 'current'})")
        self.checks.check(self.api, manifests.workload_images(objects, BUILT_WORKLOADS))
        self.apply(objects, on_step)
        self.wait_rollouts(objects, timeout=settings.rollout_timeout, on_step=on_step)
        status = self.status()
        status.notes[:0] = rendered.notes
        return status

    def manifests(
        self, replicas: int, *, include_secrets: bool, components: tuple[str, ...] = ()
    ) -> manifests.Rendered:
        """What ``up --replicas N`` applies (``taskscale manifests`` prints the same)."""
        return manifests.render(
            self.project,
            self.overlay,
            min_replicas=replicas,
            include_secrets=include_secrets,
            components=components,
        )

    def apply(self, objects: list[dict[str, Any]], on_step: StepCallback = no_steps) -> None:
        """Server-side apply of every object, in order; a previous Job is replaced."""
        self.ns.apply(objects, on_step)

    def wait_rollouts(
        self,
        objects: list[dict[str, Any]],
        *,
        timeout: float,
        on_step: StepCallback = no_steps,
    ) -> list[rollout.Progress]:
        """Poll every workload until its rollout is done; ServiceNotReady after ``timeout``."""
        wanted = [
            (o["kind"], o["metadata"]["name"])
            for o in objects
            if o["kind"] in rollout.WORKLOAD_KINDS
        ]
        deadline = time.monotonic() + timeout
        while True:
            # Three list requests a poll, whatever the number of workloads.
            current = {(o["kind"], o["metadata"]["name"]): o for o in self.ns.workloads()}
            states = []
            for key in wanted:
                if key not in current:
                    kind, name = key
                    raise TargetError(f"{kind.lower()}/{name} disappeared during the rollout")
                states.append(rollout.progress(current[key]))
            pending = [s for s in states if not s.done]
            if not pending:
                return states
            pods = self.ns.items("pods")
            self.check_images(pods)
            on_step("waiting for " + ", ".join(s.describe() for s in pending))
            if time.monotonic() >= deadline:
                reasons = rollout.waiting_reasons(pods)
                hint = (
                    "see `taskscale status` and `taskscale logs COMPONENT` with the same "
                    "--target; raise [kubernetes] rollout_timeout for slow clusters"
                )
                if any("/migrate: " in line for line in reasons):
                    hint = (
                        "the migrations did not finish: read them with `taskscale logs migrate "
                        f"--target {self.name}`"
                    )
                raise ServiceNotReady(
                    f"rollout did not finish within {timeout:g}s: "
                    + ", ".join(s.describe() for s in pending),
                    hint=hint,
                    detail="\n".join(reasons) or None,
                )
            time.sleep(max(0.0, min(self._poll, deadline - time.monotonic())))

    def check_images(self, pods: list[dict[str, Any]]) -> None:
        """A TargetError (with the fix) when a container of ``pods`` cannot get its image."""
        self.checks.check_images(pods)

    # ------------------------------------------------------------------ status

    def status(self) -> StackStatus:
        endpoints = self.endpoints()
        if not self.ns.exists():
            return StackStatus(
                target=self.name,
                project=self.project.config.project.name,
                replicas=0,
                services=[],
                endpoints=endpoints,
                notes=[f"namespace {self.namespace} does not exist in context {self.api.context}"],
            )
        services: list[ServiceStatus] = []
        app_replicas = 0
        for obj in self.ns.workloads():
            if obj["kind"] == "Job":
                continue
            state = rollout.progress(obj)
            if state.name == "app":
                app_replicas = state.desired
            healthy = state.ready >= state.desired
            if state.desired == 0:
                phase = "stopped"
            elif state.ready == 0:
                phase = "starting"
            elif state.ready < state.desired:
                phase = "degraded"
            else:
                phase = "running"
            services.append(
                ServiceStatus(
                    name=state.name,
                    kind=_service_kind(state.name),
                    port=_first_port(obj),
                    healthy=healthy,
                    state=phase,
                    uptime_seconds=_age(obj),
                    detail=PodsDetail(ready=state.ready, desired=state.desired),
                )
            )
        services.sort(key=lambda s: (s.kind != "app", s.name))
        return StackStatus(
            target=self.name,
            project=self.project.config.project.name,
            replicas=app_replicas,
            services=services,
            endpoints=endpoints,
            notes=self._hpa_notes(),
        )

    def _hpa_notes(self) -> list[str]:
        notes = []
        for hpa in self.ns.items("horizontalpodautoscalers", "autoscaling/v2"):
            spec = hpa.get("spec", {})
            status = hpa.get("status") or {}
            target = next(
                (
                    m["resource"]["target"].get("averageUtilization")
                    for m in spec.get("metrics", [])
                    if m.get("type") == "Resource"
                ),
                None,
            )
            cpu = next(
                (
                    m["resource"]["current"].get("averageUtilization")
                    for m in status.get("currentMetrics") or []
                    if m.get("type") == "Resource" and m.get("resource", {}).get("current")
                ),
                None,
            )
            cpu_text = f"CPU {cpu}%" if cpu is not None else "CPU unknown (metrics-server?)"
            notes.append(
                f"autoscaler {hpa['metadata']['name']}: {status.get('currentReplicas', 0)} "
                f"current / {status.get('desiredReplicas', 0)} desired replicas "
                f"(min {spec.get('minReplicas')}, max {spec.get('maxReplicas')}); "
                f"{cpu_text} of {target}% target"
            )
        return notes

    def endpoints(self) -> Endpoints:
        forward = f"kubectl -n {self.namespace} port-forward svc/app 8080:80"
        if self.flavor == "minikube":
            try:
                result = self.checks.minikube("ip", timeout=20)
            except MissingBinary:
                result = None
            if result is not None and result.returncode == 0 and result.stdout.strip():
                return Endpoints(
                    api=f"http://{result.stdout.strip()}/", extra={"port-forward": forward}
                )
        return Endpoints(
            api=f"http://app.{self.namespace}.svc.cluster.local",
            extra={"port-forward": forward},
        )

    # ------------------------------------------------------------------ logs

    def logs(self, service: str | None, tail: int, follow: bool) -> LogStream:
        if not self.ns.exists():
            raise self._not_running()
        pods = self._pods_of(service)
        if not pods and service is None:
            raise self._not_running()
        if follow and len(pods) > MAX_FOLLOWED_PODS:
            raise UsageError(
                f"--follow streams at most {MAX_FOLLOWED_PODS} pods; "
                f"{service or 'the stack'} has {len(pods)}",
                hint="name a component or one pod",
            )
        sources = [self.ns.pod_log_source(pod, tail, follow, container) for pod, container in pods]
        return LogStream(sources, follow=follow, prefix=len(pods) > 1)

    def _not_running(self) -> TargetError:
        return TargetError(
            f"the stack is not running: namespace {self.namespace} does not exist in "
            f"context {self.api.context}",
            hint=f"start it with `taskscale up --target {self.name}` first",
        )

    def _pods_of(self, service: str | None) -> list[tuple[dict[str, Any], str | None]]:
        """(pod, container) pairs to read: every pod's main container, a workload's pods, the
        init containers called ``service`` (``migrate``), or one pod by name."""
        if service is None:
            pods = sorted(self.ns.items("pods"), key=lambda p: str(p["metadata"]["name"]))
            return [(pod, None) for pod in pods]
        workloads = {o["metadata"]["name"]: o for o in self.ns.workloads()}
        if service in workloads:
            return [(pod, None) for pod in self._workload_pods(workloads[service])]
        # An init container (every app and worker pod migrates first): its log in each pod.
        with_init = [
            o for o in workloads.values() if service in _init_containers(o["spec"]["template"])
        ]
        if with_init:
            return [(pod, service) for o in with_init for pod in self._workload_pods(o)]
        pods = self.ns.items("pods")
        by_name: list[tuple[dict[str, Any], str | None]] = [
            (p, None) for p in pods if p["metadata"]["name"] == service
        ]
        if by_name:
            return by_name
        inits = {c for o in workloads.values() for c in _init_containers(o["spec"]["template"])}
        known = ", ".join(sorted({*workloads, *inits})) or "none (is the stack up?)"
        raise UsageError(f"unknown component {service!r} on {self.name}: choose one of {known}")

    def _workload_pods(self, workload: dict[str, Any]) -> list[dict[str, Any]]:
        """A workload's pods, by its selector. A Job the API server has not given one (the
        emulator; Jobs always get one on a real cluster) selects by its pod template's labels."""
        selector = (workload["spec"].get("selector") or {}).get("matchLabels")
        labels = selector or workload["spec"]["template"]["metadata"].get("labels") or {}
        query = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        pods = [  # filtered here too: a server that ignored the selector must not mix workloads
            p
            for p in self.ns.items("pods", labelSelector=query)
            if labels.items() <= (p["metadata"].get("labels") or {}).items()
        ]
        return sorted(pods, key=lambda p: str(p["metadata"]["name"]))

    # ------------------------------------------------------------------ down

    def down(self, purge: bool = False, on_step: StepCallback = no_steps) -> DownResult:
        """Delete what ``up`` applied, keeping the volumes (PostgreSQL's data); ``purge``
        deletes the namespace and with it every PersistentVolumeClaim."""
        if not self.ns.exists():
            return DownResult(target=self.name, stopped=[], purged=False)
        stopped = sorted(o["metadata"]["name"] for o in self.ns.workloads())
        if purge:
            self._delete_namespace(on_step)
        else:
            self._delete_objects(on_step)
        return DownResult(target=self.name, stopped=stopped, purged=purge)

    def _delete_objects(self, on_step: StepCallback) -> None:
        """Every object ``up`` applied (labelled managed-by taskscale by deploy/k8s), except the
        namespace itself; the StatefulSets' PersistentVolumeClaims are not among them and stay."""
        kinds = [(k, info) for k, info in manifests.KINDS.items() if info.namespaced]
        kinds.sort(key=lambda item: -item[1].order)  # workloads first, what they use last
        for kind, info in kinds:
            for obj in self.ns.items(info.plural, info.api_version, labelSelector=MANAGED):
                labels = obj["metadata"].get("labels") or {}
                if f"{MANAGED_LABEL}={labels.get(MANAGED_LABEL)}" != MANAGED:
                    continue  # not ours (e.g. the namespace's kube-root-ca.crt ConfigMap)
                name = obj["metadata"]["name"]
                on_step(f"deleting {kind.lower()}/{name}")
                self.ns.delete(info.plural, info.api_version, name)
        timeout = self.project.config.kubernetes.rollout_timeout
        on_step("waiting for the pods to be gone")
        if not proc.poll_until(lambda: not self.ns.items("pods"), timeout, max_interval=self._poll):
            raise TargetError(
                f"pods of namespace {self.namespace} are still terminating after {timeout:g}s",
                hint=f"see kubectl get pods -n {self.namespace}",
            )

    def _delete_namespace(self, on_step: StepCallback) -> None:
        path = object_path("v1", "namespaces", None, self.namespace)
        on_step(f"deleting namespace {self.namespace}")
        try:
            self.api.request("DELETE", path, query={"propagationPolicy": "Foreground"})
        except KubeApiError as exc:
            if exc.status != 404:
                raise
        timeout = self.project.config.kubernetes.rollout_timeout
        on_step(f"waiting for namespace {self.namespace} to be gone")
        if not proc.poll_until(lambda: not self.ns.exists(), timeout, max_interval=self._poll):
            raise TargetError(
                f"namespace {self.namespace} is still terminating after {timeout:g}s",
                hint=f"look for stuck finalizers: kubectl get all,pvc -n {self.namespace}",
            )

    # ------------------------------------------------------------------ capabilities

    def load_generator(self) -> LoadGenerator:
        from taskscale.targets.kube.loadgen import ClusterLoadGenerator

        return ClusterLoadGenerator(
            self.ns,
            templates=self._locust_templates,
            target=self.name,
            check_images=self.check_images,
            start_timeout=self.project.config.kubernetes.rollout_timeout,
            poll_interval=self._poll,
        )

    def _locust_templates(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The Locust master and worker pod templates of the optional loadtest component, as
        the overlay builds with it (image, security context, resources); nothing is applied."""
        replicas = self.project.config.stack.replicas
        rendered = self.manifests(
            replicas, include_secrets=False, components=(manifests.LOADTEST_COMPONENT,)
        )
        by_name = {o["metadata"]["name"]: o for o in rendered.objects if o["kind"] == "Deployment"}
        found = []
        for name in ("locust-master", "locust-worker"):
            if name not in by_name:
                raise ConfigError(
                    f"deploy/k8s/components/{manifests.LOADTEST_COMPONENT} has no deployment/"
                    f"{name}: the Locust pod templates come from there",
                    hint="bring it back with `taskscale update`",
                )
            found.append(by_name[name]["spec"]["template"])
        return found[0], found[1]

    def faults(self) -> FaultInjector:
        """Pod deletes (``kill``); no ``stop`` (docs/drill.md)."""
        from taskscale.targets.kube.faults import KubeFaults

        return KubeFaults(lambda: self.ns, self.name, _service_kind)

    def telemetry(self) -> TelemetrySource:
        """/metrics of each app pod and the worker through port-forward tunnels, lag from
        the primary's pg_stat_replication through exec, CPU from metrics-server."""
        from taskscale.targets.kube.telemetry import KubeTelemetry

        return KubeTelemetry(lambda: self.ns)

    def replication(self) -> Replication:
        """Status only: promotion is manual on this target (docs/kubernetes.md)."""
        from taskscale.targets.kube.replication import PodReplication

        return PodReplication(lambda: self.ns, self.name)


def _init_containers(template: dict[str, Any]) -> list[str]:
    return [str(c["name"]) for c in template.get("spec", {}).get("initContainers") or []]


def _first_port(obj: dict[str, Any]) -> int | None:
    for container in obj["spec"]["template"]["spec"].get("containers", []):
        for port in container.get("ports", []):
            return int(port["containerPort"])
    return None


def _age(obj: dict[str, Any]) -> float | None:
    created = obj.get("metadata", {}).get("creationTimestamp")
    if not created:
        return None
    try:
        when = datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, (datetime.now(UTC) - when).total_seconds())
