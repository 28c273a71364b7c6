"""``loadtest --target minikube|kubernetes``: Locust as two Jobs in the stack's namespace.

A master Job and a worker Job (one pod per ``--processes``) run the scenario from a ConfigMap,
with taskscale's Locust plugin next to it. Their pod specs are the templates of the
``locust-master`` / ``locust-worker`` Deployments of the optional kustomize component
``deploy/k8s/components/loadtest``, built with the overlay (never applied: the base has no
Locust), so image, security context and resources stay in the manifests; only the command, the
environment and the ConfigMap volume are set here. The plugin
prints its HDR dumps (workers) and progress (master) as framed records on stdout
(``loadgen.channel``); taskscale reads them back from the pod logs and hands the merged metrics
to the same report code as a local run. Every object is deleted afterwards, also on failure or
Ctrl-C.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import taskscale.loadgen
from taskscale import proc
from taskscale.errors import CommandFailed, TargetError, TaskscaleError
from taskscale.loadgen.channel import (
    RATE_ENV,
    RECORD_PREFIX,
    STDOUT_ENV,
    STOP_WAIT_ENV,
    WORKERS_ENV,
    decode_records,
)
from taskscale.loadgen.job import (
    GRACE_S,
    LoadGenerator,
    LocustJob,
    LocustRun,
    ProgressCallback,
    ProgressReader,
    dump_notes,
    headless_options,
    judge_generator,
)
from taskscale.loadgen.metrics import RunMetrics
from taskscale.targets.kube import rollout
from taskscale.targets.kube.api import KubeApiError
from taskscale.targets.kube.namespace import Namespace

NAME = "taskscale-locust"
MASTER = f"{NAME}-master"
WORKER = f"{NAME}-worker"
ROLE_LABEL = "taskscale.dev/locust-role"
MOUNT = "/opt/taskscale"
APP_URL = "http://app"  # the app Service, from inside the namespace
MASTER_PORT = 5557
# ConfigMap key -> path under MOUNT (keys cannot hold "/").
FILES = {
    "locustfile.py": "locustfile.py",
    "taskscale-init.py": "taskscale/__init__.py",
    "loadgen-init.py": "taskscale/loadgen/__init__.py",
    "channel.py": "taskscale/loadgen/channel.py",
    "metrics.py": "taskscale/loadgen/metrics.py",
    "ledger.py": "taskscale/loadgen/ledger.py",
    "locust_plugin.py": "taskscale/loadgen/locust_plugin.py",
    "drill_writer.py": "taskscale/loadgen/drill_writer.py",
}
LOG_TAIL_LINES = 50
COLLECT_TIMEOUT_S = 30.0
DONE_PHASES = ("Succeeded", "Failed")


def plugin_files(locustfile: Path) -> dict[str, str]:
    """The ConfigMap's data: the scenario, the plugin, the modules it imports and the
    drill's writers (loaded in drills only)."""
    package = Path(taskscale.loadgen.__file__).resolve().parent
    try:
        scenario = locustfile.read_text(encoding="utf-8")
    except OSError as exc:
        raise TargetError(f"cannot read the scenario {locustfile}: {exc.strerror}") from exc
    return {
        "locustfile.py": scenario,
        "taskscale-init.py": "",
        "loadgen-init.py": "",
        **{
            name: (package / name).read_text(encoding="utf-8")
            for name in (
                "channel.py",
                "metrics.py",
                "ledger.py",
                "locust_plugin.py",
                "drill_writer.py",
            )
        },
    }


def _pod_template(
    template: dict[str, Any], role: str, args: list[str], env: dict[str, str]
) -> dict[str, Any]:
    pod = copy.deepcopy(template)
    meta = pod.setdefault("metadata", {})
    meta["labels"] = {
        **(meta.get("labels") or {}),
        "app.kubernetes.io/name": f"{NAME}-{role}",
        ROLE_LABEL: role,
    }
    spec = pod["spec"]
    spec["restartPolicy"] = "Never"
    container = spec["containers"][0]
    container["command"] = ["locust"]
    container["args"] = args
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        container.pop(probe, None)  # headless: no web UI to probe, and a Job needs none
    kept = [e for e in container.get("env") or [] if e.get("name") not in env]
    container["env"] = kept + [{"name": k, "value": v} for k, v in env.items()]
    mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") != NAME]
    container["volumeMounts"] = [*mounts, {"name": NAME, "mountPath": MOUNT, "readOnly": True}]
    volumes = [v for v in spec.get("volumes") or [] if v.get("name") != NAME]
    items = [{"key": key, "path": path} for key, path in FILES.items()]
    spec["volumes"] = [*volumes, {"name": NAME, "configMap": {"name": NAME, "items": items}}]
    return pod


def _job(name: str, pod: dict[str, Any], count: int, deadline_s: int) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/component": "loadtest"}},
        "spec": {
            "parallelism": count,
            "completions": count,
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline_s,
            # If taskscale dies before its cleanup, the cluster still removes the run.
            "ttlSecondsAfterFinished": 3600,
            "template": pod,
        },
    }


def locust_objects(
    master: dict[str, Any],
    worker: dict[str, Any],
    job: LocustJob,
    *,
    namespace: str,
    files: dict[str, str],
    start_timeout_s: float,
) -> list[dict[str, Any]]:
    """ConfigMap, master Service, master Job and worker Job of one run (pure)."""
    workers = job.processes
    deadline = round(job.duration_s + job.stop_timeout_s + GRACE_S + start_timeout_s)
    scripts = ",".join(
        [
            f"{MOUNT}/locustfile.py",
            f"{MOUNT}/taskscale/loadgen/locust_plugin.py",
            *(f"{MOUNT}/taskscale/loadgen/{name}" for name in job.extra_scripts),
        ]
    )
    env = {
        **(job.env or {}),
        "PYTHONPATH": MOUNT,
        "PYTHONDONTWRITEBYTECODE": "1",
        STDOUT_ENV: "1",
        RATE_ENV: f"{job.rate:g}" if job.rate else "",
        # Each worker is its own pod: the master cannot wait for their files.
        WORKERS_ENV: "0",
        STOP_WAIT_ENV: f"{job.stop_timeout_s + 5:g}",
    }
    master_args = [
        "-f",
        scripts,
        "--master",
        "--expect-workers",
        str(workers),
        "--expect-workers-max-wait",
        f"{start_timeout_s:g}",
        *headless_options(job),
    ]
    # Workers get --users too: the plugin paces each user from it under --rate.
    worker_args = ["-f", scripts, "--worker", "--master-host", MASTER, "--users", str(job.users)]
    labels = {"app.kubernetes.io/component": "loadtest"}
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": NAME, "namespace": namespace, "labels": labels},
            "data": files,
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": MASTER, "namespace": namespace, "labels": labels},
            "spec": {
                "selector": {"app.kubernetes.io/name": MASTER, ROLE_LABEL: "master"},
                "ports": [{"name": "master", "port": MASTER_PORT, "targetPort": MASTER_PORT}],
            },
        },
        _job(MASTER, _pod_template(master, "master", master_args, env), 1, deadline),
        _job(WORKER, _pod_template(worker, "worker", worker_args, env), workers, deadline),
    ]


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity (``250m``, ``12345n``, ``1``) in cores."""
    units = {"n": 1e-9, "u": 1e-6, "m": 1e-3}
    try:
        if quantity and quantity[-1] in units:
            return float(quantity[:-1]) * units[quantity[-1]]
        return float(quantity)
    except ValueError:
        return 0.0


def _readable(log: str) -> str | None:
    """The tail of a Locust log without the plugin's records (for an error's detail)."""
    return proc.tail("\n".join(x for x in log.splitlines() if RECORD_PREFIX not in x)) or None


def _of_role(pods: list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    """The pods of ``role`` (master or worker) among ``pods``, by name. Filtered here even
    after a selector: one the server ignored must not mix masters and workers."""
    return sorted(
        (p for p in pods if (p["metadata"].get("labels") or {}).get(ROLE_LABEL) == role),
        key=lambda p: str(p["metadata"]["name"]),
    )


class ClusterLoadGenerator(LoadGenerator):
    """Locust master and workers as Jobs next to the app, reading results from the pod logs."""

    host = APP_URL

    def __init__(
        self,
        namespace: Namespace,
        *,
        templates: Callable[[], tuple[dict[str, Any], dict[str, Any]]],
        target: str,
        check_images: Callable[[list[dict[str, Any]]], None],
        start_timeout: float,
        poll_interval: float,
    ) -> None:
        self.ns = namespace
        self._templates = templates  # the (master, worker) pod templates
        self.target = target  # the target's name, for hints
        self._check_images = check_images
        self._start_timeout = start_timeout
        self._poll = poll_interval

    def check_ready(self) -> None:
        app = self.ns.get("deployments", "apps/v1", "app")
        if app is None or not int((app.get("status") or {}).get("readyReplicas") or 0):
            raise TargetError(
                f"the app has no ready pod in namespace {self.ns.name}; no load was sent",
                hint=f"see `taskscale status --target {self.target}`",
            )

    def run(self, job: LocustJob, on_progress: ProgressCallback | None) -> LocustRun:
        start_timeout = self._start_timeout
        master, worker = self._templates()
        objects = locust_objects(
            master,
            worker,
            job,
            namespace=self.ns.name,
            files=plugin_files(job.locustfile),
            start_timeout_s=start_timeout,
        )
        job.run_dir.mkdir(parents=True, exist_ok=True)
        started = datetime.now(UTC)
        cpu: tuple[list[float], list[float]] = ([], [])
        try:
            self.ns.apply(objects)
            self._wait(job, on_progress, start_timeout, cpu)
            dumps, master_log = self._collect(job)
        finally:
            self.cleanup()
        finished = datetime.now(UTC)
        log = job.run_dir / "locust.log"
        log.write_text(master_log, encoding="utf-8")
        if not dumps:
            raise CommandFailed(
                "locust recorded no requests in the cluster (its workers failed to start or the "
                "scenario sent nothing)",
                detail=_readable(master_log),
            )
        image = master["spec"]["containers"][0].get("image", "?")
        notes = [
            f"Locust ran in the cluster: 1 master and {job.processes} worker pod(s) of image "
            f"{image} against {APP_URL}; the environment's CPU count and Locust version are "
            "this machine's",
            *dump_notes(dumps, expected=job.processes),
        ]
        totals, busiest = cpu
        if not totals:
            notes.append(
                "the worker pods' CPU could not be read (metrics API): whether the load "
                "generator was saturated is unknown"
            )
        return LocustRun(
            metrics=RunMetrics.from_dumps(dumps),
            generator=judge_generator(
                totals, busiest, [], processes=job.processes, cpus=job.processes
            ),
            started_at=started,
            finished_at=finished,
            locust_log=log,
            notes=notes,
        )

    def _wait(
        self,
        job: LocustJob,
        on_progress: ProgressCallback | None,
        start_timeout: float,
        cpu: tuple[list[float], list[float]],
    ) -> None:
        """Until the master Job succeeds; progress from its log, CPU from the metrics API."""
        begin = time.monotonic()
        limit = job.duration_s + job.stop_timeout_s + GRACE_S + start_timeout
        reader = ProgressReader(None, job)
        while True:
            master = self.ns.get("jobs", "batch/v1", MASTER)
            outcome = rollout.job_outcome(master) if master is not None else "the job disappeared"
            if outcome == "succeeded":
                return
            # Every Locust pod, masters and workers, in one request a poll.
            pods = self.ns.items("pods", labelSelector=ROLE_LABEL)
            if outcome is not None:
                raise CommandFailed(
                    f"the Locust master job failed: {outcome}",
                    detail=_readable(self._log(_of_role(pods, "master"), LOG_TAIL_LINES)),
                )
            self._check_images(pods)
            self._sample_cpu(cpu)
            if on_progress is not None:
                records = decode_records(
                    self._log(_of_role(pods, "master"), LOG_TAIL_LINES).splitlines(), "progress"
                )
                on_progress(reader.parse(records[-1] if records else {}, time.monotonic() - begin))
            if time.monotonic() - begin > limit:
                detail = "\n".join(rollout.waiting_reasons(pods)) or None
                raise CommandFailed(
                    f"Locust did not finish in the cluster within {limit:.0f}s; stopped it",
                    hint="raise [kubernetes] rollout_timeout if its pods start slowly",
                    detail=detail,
                )
            time.sleep(self._poll)

    def _pods(self, role: str) -> list[dict[str, Any]]:
        return _of_role(self.ns.items("pods", labelSelector=f"{ROLE_LABEL}={role}"), role)

    def _log(self, pods: list[dict[str, Any]], tail: int | None = None) -> str:
        """The log of the newest pod in ``pods`` ("" when there is none yet)."""
        if not pods:
            return ""
        return self._pod_log(pods[-1], tail)

    def _pod_log(self, pod: dict[str, Any], tail: int | None = None) -> str:
        try:
            return self.ns.pod_log(pod, tail)
        except KubeApiError:
            return ""  # not started yet (ContainerCreating): no log to read

    def _collect(self, job: LocustJob) -> tuple[list[dict[str, Any]], str]:
        """Each worker's last dump (final if it printed one), and the master's whole log."""
        proc.poll_until(
            lambda: all(
                (p.get("status") or {}).get("phase") in DONE_PHASES for p in self._pods("worker")
            ),
            COLLECT_TIMEOUT_S,
            max_interval=self._poll,
        )
        raw = job.run_dir / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        dumps = []
        for pod in self._pods("worker"):
            records = decode_records(self._pod_log(pod).splitlines(), "dump")
            if not records:
                continue
            finals = [r for r in records if r.get("final")]
            dump = (finals or records)[-1]
            name = pod["metadata"]["name"]
            (raw / f"worker-{name}.json").write_text(json.dumps(dump), encoding="utf-8")
            dumps.append(dump)
        return dumps, self._log(self._pods("master"))

    def _sample_cpu(self, cpu: tuple[list[float], list[float]]) -> None:
        path = f"/apis/metrics.k8s.io/v1beta1/namespaces/{self.ns.name}/pods"
        try:
            data = self.ns.api.request("GET", path, query={"labelSelector": f"{ROLE_LABEL}=worker"})
        except TaskscaleError:
            return  # no metrics-server answer: saturation stays unknown (noted in the report)
        per_pod = [
            sum(cpu_cores(str(c.get("usage", {}).get("cpu", "0"))) for c in item["containers"])
            * 100.0
            for item in data.get("items") or []
            if item.get("containers")
        ]
        if per_pod:
            cpu[0].append(round(sum(per_pod), 1))
            cpu[1].append(round(max(per_pod), 1))

    def cleanup(self) -> None:
        """Delete the run's objects (their pods go with the Jobs); never raises."""
        for plural, version, name in (
            ("jobs", "batch/v1", MASTER),
            ("jobs", "batch/v1", WORKER),
            ("services", "v1", MASTER),
            ("configmaps", "v1", NAME),
        ):
            with contextlib.suppress(TaskscaleError):
                self.ns.delete(plural, version, name)
