"""loadtest in the cluster, replicate status through pod exec, the image check, and the one-line
errors of each, against kmock's emulator. Nothing runs there: FakeLocust plays the Locust pods
(logs carrying the plugin's real records, Job status patched), the emulator answers exec."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskscale import proc
from taskscale.config import Project
from taskscale.errors import MissingBinary, TargetError
from taskscale.loadgen.channel import encode_record
from taskscale.loadgen.metrics import Recorder
from taskscale.loadtest.service import run_loadtest
from taskscale.loadtest.spec import LoadTestSpec
from taskscale.targets.capabilities import Unsupported
from taskscale.targets.kube import loadgen
from tests.cli.test_signals import EXPECTED, interrupt, start_cli
from tests.conftest import CliRunner
from tests.kubernetes.conftest import APP_IMAGE, LOADTEST_IMAGE, FakeController, needs_kubectl
from tests.kubernetes.emulator import RunningEmulator
from tests.kubernetes.test_target import add_pod, target

pytestmark = [pytest.mark.kubernetes, needs_kubectl]
NS = "/api/v1/namespaces/tasks-api"


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("hint:")]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr
    return lines[0]


def _serve_log(emulator: RunningEmulator, pod: str, lines: list[str]) -> None:
    path = f"get {NS}/pods/{pod}/log"
    text = "".join(line + "\n" for line in lines).encode()
    emulator.call(lambda: emulator.emulator[path] << text)


def _dump(latencies_ms: list[float], failed: int = 0, *, final: bool = True) -> list[str]:
    recorder = Recorder()
    now = time.time()
    for i, ms in enumerate(latencies_ms):
        recorder.record(
            "GET",
            "/tasks/{id}",
            ms,
            failed=i < failed,
            answered=True,
            start_time=now - ms / 1000,
            end_time=now,
            users=2,
        )
    return encode_record("dump", {**recorder.dump(), "final": final})


class FakeLocust:
    """Once taskscale has created the Locust Jobs: their pods, logs and a finished master."""

    def __init__(
        self,
        emulator: RunningEmulator,
        *,
        fail: bool = False,
        hold: float = 0.0,
        during: Callable[[], None] | None = None,
    ) -> None:
        """``hold``: seconds the master runs before it finishes, calling ``during`` first
        (load the telemetry tests send to real servers meanwhile)."""
        self.emulator = emulator
        self.fail = fail
        self.hold = hold
        self.during = during
        self.objects: dict[str, list[dict[str, Any]]] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FakeLocust:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._thread.join(10)

    def _run(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            jobs = {o["metadata"]["name"] for o in self.emulator.objects("jobs")}
            if {loadgen.MASTER, loadgen.WORKER} <= jobs:
                break
            time.sleep(0.02)
        else:
            return
        # What taskscale asked for, kept for the assertions (it is deleted at the end).
        for plural in ("jobs", "configmaps", "services"):
            self.objects[plural] = self.emulator.objects(plural)
        role = loadgen.ROLE_LABEL
        add_pod(self.emulator, "locust-m", {role: "master"}, phase="Running")
        add_pod(self.emulator, "locust-w1", {role: "worker"}, phase="Succeeded")
        add_pod(self.emulator, "locust-w2", {role: "worker"}, phase="Succeeded")
        progress = {"time": time.time(), "started_at": time.time() - 1, "users": 2}
        _serve_log(
            self.emulator,
            "locust-m",
            ["[locust] starting", *encode_record("progress", {**progress, "requests": 3})],
        )
        # Worker 1: an early (non-final) dump then its final one; only the final counts.
        _serve_log(
            self.emulator,
            "locust-w1",
            [*_dump([1.0], final=False), "noise", *_dump([10.0, 20.0], 1)],
        )
        _serve_log(self.emulator, "locust-w2", _dump([30.0]))
        finish_at = time.monotonic() + self.hold
        if self.during is not None:
            self.during()
        time.sleep(max(0.0, finish_at - time.monotonic()))  # the run's length, not a wait
        status: dict[str, Any] = {"succeeded": 1}
        if self.fail:
            status = {"conditions": [{"type": "Failed", "status": "True", "message": "boom"}]}
        httpx.patch(
            f"{self.emulator.url}/apis/batch/v1{NS[7:]}/jobs/{loadgen.MASTER}/status",
            json={"status": status},
            headers={"Content-Type": "application/merge-patch+json"},
        ).raise_for_status()


@pytest.fixture
def stack_up(
    k8s_project: Project,
    emulator: RunningEmulator,
    metrics_server: None,
    controller: FakeController,
) -> Project:
    with controller:
        target(k8s_project).up(1)
    return k8s_project


def _leftovers(emulator: RunningEmulator) -> list[str]:
    names = []
    for plural in ("jobs", "configmaps", "services"):
        names += [o["metadata"]["name"] for o in emulator.objects(plural)]
    return [n for n in names if n.startswith(loadgen.NAME)]


# ---------------------------------------------------------------- loadtest


def test_cli_loadtest_in_the_cluster_reports_and_gates(
    run_cli: CliRunner, stack_up: Project, emulator: RunningEmulator, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    with FakeLocust(emulator) as fake:
        result = run_cli(
            "loadtest", "--target", "kubernetes", "--context", "kmock", "-p", str(stack_up.root),
            "--processes", "2", "-d", "2s", "-u", "4", "--slo", "errors<1%", "--slo", "p99<100ms",
            "-o", str(out), "--json",
        )  # fmt: skip
    # The gate: 1 failure of 3 requests is above 1 %: exit 1 after every report is written.
    assert result.exit_code == 1, result.stderr
    assert "1 SLO gate(s) failed: errors<1%" in result.stderr
    report = json.loads(result.stdout)
    total = report["total"]
    assert (total["requests"], total["failures"]) == (3, 1), "w1's early dump is superseded"
    assert total["latency_ms"]["p99"] == pytest.approx(30.0, rel=0.01)
    assert report["environment"]["target"] == "kubernetes"
    assert report["environment"]["host"] == "http://app"
    assert any(
        n.startswith("Locust ran in the cluster: 1 master and 2 worker") for n in report["notes"]
    )
    for name in ("report.json", "report.md", "report.html", "junit.xml", "histograms.json"):
        assert (out / name).is_file(), name
    assert "[locust] starting" in (out / "locust.log").read_text()
    assert sorted(p.name for p in (out / "raw").iterdir()) == [
        "worker-locust-w1.json",
        "worker-locust-w2.json",
    ]

    jobs = {j["metadata"]["name"]: j for j in fake.objects["jobs"]}
    worker = jobs[loadgen.WORKER]["spec"]
    assert worker["parallelism"] == worker["completions"] == 2
    master_pod = jobs[loadgen.MASTER]["spec"]["template"]["spec"]
    container = master_pod["containers"][0]
    # The pod spec is the loadtest component's locust-master, built with the overlay: the
    # loadtest image of taskscale.toml, and no Locust Deployment was ever applied.
    assert container["image"] == LOADTEST_IMAGE
    assert not [d for d in emulator.objects("deployments") if "locust" in d["metadata"]["name"]]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert master_pod["restartPolicy"] == "Never" and "readinessProbe" not in container
    args = container["args"]
    assert args[args.index("--expect-workers") + 1] == "2" and "--headless" in args
    assert args[args.index("--host") + 1] == "http://app"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TASKSCALE_LOADTEST_STDOUT"] == "1" and env["TASKSCALE_SCENARIO"] == "mixed"
    (config_map,) = fake.objects["configmaps"][-1:]
    plugin = Path(loadgen.__file__).parents[2] / "loadgen" / "locust_plugin.py"
    assert config_map["data"]["locust_plugin.py"] == plugin.read_text()
    assert _leftovers(emulator) == [], "the run's Jobs, Service and ConfigMap are deleted"


def test_loadtest_master_failure_is_one_line_and_cleans_up(
    run_cli: CliRunner, stack_up: Project, emulator: RunningEmulator, tmp_path: Path
) -> None:
    with FakeLocust(emulator, fail=True):
        result = run_cli(
            "loadtest", "--target", "kubernetes", "--context", "kmock", "-p", str(stack_up.root),
            "--processes", "2", "-d", "1s", "-o", str(tmp_path / "run"),
        )  # fmt: skip
    assert result.exit_code == 4
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    # One error line, then the master's log tail (without the plugin's records) as its detail.
    assert lines[0] == "error: the Locust master job failed: boom"
    assert "[locust] starting" in lines[1:] and "TASKSCALE-RECORD" not in result.stderr
    assert _leftovers(emulator) == []


def test_loadtest_interrupted_cleans_up(stack_up: Project, emulator: RunningEmulator) -> None:
    spec = LoadTestSpec.build(
        users=2, spawn_rate=1, duration="1s", scenario="mixed", processes=1,
        target="kubernetes", context="kmock",
    )  # fmt: skip

    def interrupt(_: object) -> None:
        assert {loadgen.MASTER, loadgen.WORKER} <= set(_leftovers(emulator))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_loadtest(spec, stack_up, on_progress=interrupt)
    assert _leftovers(emulator) == []


def test_loadtest_bad_input(
    run_cli: CliRunner, k8s_project: Project, emulator: RunningEmulator
) -> None:
    root = str(k8s_project.root)
    cases = [
        (["--processes", "0"], 2, "invalid --processes 0: between 1 and 100"),
        (["--processes", "101"], 2, "invalid --processes 101"),
        (["--host", "http://x:1"], 2, "--host loads a URL from this machine"),
        (["--target", "nope"], 2, "unknown target 'nope'"),
        ([], 6, "the kubernetes stack is not running; no load was sent"),
    ]
    for extra, code, needle in cases:
        args = ["loadtest", "--target", "kubernetes", "--context", "kmock", "-p", root, *extra]
        if extra[:1] == ["--target"]:
            args = ["loadtest", "-p", root, *extra]
        result = run_cli(*args)
        assert result.exit_code == code, (extra, result.stderr)
        assert needle in _one_error_line(result.stderr), extra


def test_loadtest_without_a_ready_app(
    run_cli: CliRunner, stack_up: Project, emulator: RunningEmulator
) -> None:
    httpx.patch(
        f"{emulator.url}/apis/apps/v1{NS[7:]}/deployments/app/status",
        json={"status": {"readyReplicas": 0}},
        headers={"Content-Type": "application/merge-patch+json"},
    ).raise_for_status()
    result = run_cli(
        "loadtest", "--target", "kubernetes", "--context", "kmock", "-p", str(stack_up.root)
    )
    assert result.exit_code == 6
    assert "the app has no ready pod in namespace tasks-api" in _one_error_line(result.stderr)
    assert _leftovers(emulator) == []


# ---------------------------------------------------------------- replicate status


def _answer(**fields: Any) -> str:
    base = {
        "in_recovery": False,
        "timeline": 1,
        "current_lsn": "0/3000148",
        "receive_lsn": None,
        "replay_lsn": None,
        "replay_delay_seconds": None,
        "receiver_status": None,
        "synchronous_standby_names": "",
        "senders": [],
    }
    return json.dumps({**base, **fields}) + "\n"


def _postgres_pods(emulator: RunningEmulator) -> None:
    for name, role, phase, ip in (
        ("postgres-primary-0", "primary", "Running", "10.0.0.10"),
        ("postgres-standby-0", "standby", "Running", "10.0.0.11"),
        ("postgres-standby-1", "standby", "Pending", None),
    ):
        labels = {"app.kubernetes.io/name": "postgres", "taskscale.dev/role": role}
        add_pod(emulator, name, labels, phase=phase, podIP=ip)


def test_cli_replicate_status_reads_pg_stat_replication_through_exec(
    run_cli: CliRunner, stack_up: Project, emulator: RunningEmulator
) -> None:
    _postgres_pods(emulator)
    sender = {
        "application_name": "walreceiver",
        "client_addr": "10.0.0.11",
        "state": "streaming",
        "sent_lsn": "0/3000148",
        "write_lsn": "0/3000148",
        "flush_lsn": "0/3000148",
        "replay_lsn": "0/3000060",
        "lag_bytes": 232,
        "replay_lag_seconds": 0.004,
        "sync_state": "async",
        "slot": None,
    }
    emulator.emulator.exec_results.update(
        {
            "postgres-primary-0": (_answer(senders=[sender]), "", 0),
            "postgres-standby-0": (
                _answer(in_recovery=True, receiver_status="streaming", replay_lsn="0/3000060"),
                "",
                0,
            ),
        }
    )
    args = ["replicate", "status", "--target", "kubernetes", "--context", "kmock"]
    result = run_cli(*args, "-p", str(stack_up.root), "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"target", "primary", "sync", "nodes", "notes"}, "the local target's shape"
    assert (data["target"], data["primary"], data["sync"]) == (
        "kubernetes",
        "postgres-primary-0",
        False,
    )
    primary, streaming, pending = data["nodes"]
    assert (primary["role"], primary["state"], primary["timeline"]) == ("primary", "running", 1)
    assert primary["sent_lsn"] == "0/3000148" and primary["host"] == "10.0.0.10"
    assert (streaming["name"], streaming["state"], streaming["lag_bytes"]) == (
        "postgres-standby-0",
        "streaming",
        232,
    )
    assert streaming["lag_seconds"] == 0.004 and streaming["replay_lsn"] == "0/3000060"
    assert (pending["name"], pending["state"]) == ("postgres-standby-1", "down")
    assert data["notes"] == ["pod postgres-standby-1 is Pending"]
    # psql ran in each running pod's container, over the local socket, as the pod's own user.
    assert sorted(pod for pod, _, _ in emulator.emulator.execs) == [
        "postgres-primary-0",
        "postgres-standby-0",
    ]
    _, container, argv = emulator.emulator.execs[0]
    assert container == "main" and argv[:2] == ["sh", "-c"] and "pg_stat_replication" in argv[-1]
    table = run_cli(*args, "-p", str(stack_up.root))
    assert table.exit_code == 0 and "postgres-standby-0" in table.stdout


def test_replicate_status_when_psql_fails(stack_up: Project, emulator: RunningEmulator) -> None:
    _postgres_pods(emulator)
    emulator.emulator.exec_results["postgres-primary-0"] = ("", "psql: error: no socket\n", 2)
    status = target(stack_up).replication().status()
    assert status.nodes[0].state == "down"
    assert "postgres-primary-0: psql exited 2: psql: error: no socket" in status.notes
    # The standby pod is not in exec_results: the emulator fails that exec too.
    assert status.nodes[1].state == "down"
    assert any(n.startswith("primary postgres-primary-0 does not answer") for n in status.notes)


@pytest.mark.parametrize("sub", [["switchover", "--to", "x"], ["failover"], ["rejoin", "x"], []])
def test_other_replicate_commands_say_unsupported(
    run_cli: CliRunner, k8s_project: Project, sub: list[str]
) -> None:
    result = run_cli("replicate", *sub, "--target", "kubernetes", "-p", str(k8s_project.root))
    assert result.exit_code == 6
    line = _one_error_line(result.stderr)
    command = " ".join(["replicate", *sub[:1]])
    assert f"`taskscale {command}` is not supported on the kubernetes target" in line, line


def test_replicate_status_of_a_stack_that_is_not_up(
    run_cli: CliRunner, k8s_project: Project, emulator: RunningEmulator
) -> None:
    args = ["replicate", "status", "--target", "kubernetes", "--context", "kmock"]
    result = run_cli(*args, "-p", str(k8s_project.root))
    assert result.exit_code == 6
    assert "the stack is not running: namespace tasks-api does not exist" in _one_error_line(
        result.stderr
    )


# ---------------------------------------------------------------- image check


def _with_image(project: Project, image: str) -> Project:
    images = project.config.images.model_copy(update={"app": image})
    project.config = project.config.model_copy(update={"images": images})
    return project


def _registry(code: int, stderr: str) -> Any:
    calls: list[list[str]] = []

    def run(argv: list[str], *, timeout: float, check: bool = True) -> proc.Completed:
        assert timeout > 0 and not check
        calls.append(argv)
        if code < 0:
            raise MissingBinary("program not found: docker")
        return proc.Completed(tuple(argv), code, "", stderr)

    run.calls = calls  # type: ignore[attr-defined]
    return run


@pytest.mark.usefixtures("metrics_server")
def test_a_local_only_image_name_is_refused_before_anything_is_applied(
    k8s_project: Project, emulator: RunningEmulator
) -> None:
    runner = _registry(0, "")
    stack = target(_with_image(k8s_project, "tasks-api-app:0.1.0"), runner=runner)
    with pytest.raises(TargetError) as info:
        stack.up(1)
    assert info.value.message == (
        "image tasks-api-app:0.1.0 is a local-only name: cluster nodes would pull "
        "docker.io/library/tasks-api-app:0.1.0, which is not your build"
    )
    assert info.value.hint is not None and "docker push" in info.value.hint
    assert emulator.objects("deployments") == [] and runner.calls == []


@pytest.mark.usefixtures("metrics_server")
@pytest.mark.parametrize("flavor", ["kubernetes", "minikube"])
@pytest.mark.parametrize(
    "image", ["registry.example.com/tasks-api-app:latest", "registry.example.com/tasks-api-app"]
)
def test_an_image_not_pinned_to_a_version_is_refused(
    k8s_project: Project, emulator: RunningEmulator, image: str, flavor: str
) -> None:
    """The check reads the image of the built manifests, which taskscale.toml sets."""
    runner = _registry(0, "")
    with pytest.raises(TargetError) as info:
        target(_with_image(k8s_project, image), flavor, runner=runner).up(1)
    assert info.value.message == (
        f"image {image} is not pinned to a version: nodes could run different builds under one name"
    )
    assert info.value.hint is not None and "[images] app" in info.value.hint
    assert emulator.objects("deployments") == [] and runner.calls == []


@pytest.mark.usefixtures("metrics_server")
def test_an_image_missing_from_its_registry(
    k8s_project: Project, emulator: RunningEmulator
) -> None:
    runner = _registry(1, f"no such manifest: {APP_IMAGE}\n")
    with pytest.raises(TargetError) as info:
        target(k8s_project, runner=runner).up(1)
    assert info.value.message == (
        f"image {APP_IMAGE} is not in its registry (docker manifest inspect: no such manifest: "
        f"{APP_IMAGE})"
    )
    assert info.value.hint == f"build and push it: `docker push {APP_IMAGE}`"
    assert runner.calls == [["docker", "manifest", "inspect", APP_IMAGE]]
    assert emulator.objects("deployments") == []


@pytest.mark.usefixtures("metrics_server")
@pytest.mark.parametrize(("code", "said"), [(-1, ""), (1, "unauthorized: authentication required")])
def test_when_the_registry_cannot_tell_up_goes_on(
    k8s_project: Project,
    emulator: RunningEmulator,
    controller: FakeController,
    code: int,
    said: str,
) -> None:
    with controller:
        target(k8s_project, runner=_registry(code, said)).up(1)
    assert emulator.objects("deployments"), "no docker, or no credentials: not proof of absence"


# ---------------------------------------------------------------- logs -f


def test_logs_follow_bad_input(
    run_cli: CliRunner,
    stack_up: Project,
    emulator: RunningEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = ["logs", "--target", "kubernetes", "--context", "kmock", "-p", str(stack_up.root), "-f"]
    result = run_cli(*args, "nginx")
    assert result.exit_code == 2
    assert "unknown component 'nginx'" in _one_error_line(result.stderr)
    for name in ("app-a", "app-b"):
        add_pod(emulator, name, {"app.kubernetes.io/name": "app"}, phase="Running")
    monkeypatch.setattr("taskscale.targets.kube.target.MAX_FOLLOWED_PODS", 1)
    result = run_cli(*args, "app")
    assert result.exit_code == 2
    assert "--follow streams at most 1 pods; app has 2" in _one_error_line(result.stderr)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_loadtest_signalled_in_a_real_process_cleans_up(
    stack_up: Project, emulator: RunningEmulator, sig: signal.Signals
) -> None:
    """SIGTERM (a CI runner cancelling) cleans up exactly like Ctrl-C: Jobs, Service and
    ConfigMap are deleted, one line, exit 143 (130)."""
    process = start_cli(
        "loadtest", "--target", "kubernetes", "--context", "kmock", "-p", str(stack_up.root),
        "--processes", "1", "-d", "30s",
    )  # fmt: skip
    try:
        assert proc.poll_until(
            lambda: {loadgen.MASTER, loadgen.WORKER, loadgen.NAME} <= set(_leftovers(emulator)),
            30,
        ), _leftovers(emulator)
    finally:
        code, stderr = interrupt(process, sig)
    assert (code, stderr) == (EXPECTED[sig][0], [EXPECTED[sig][1]])
    assert _leftovers(emulator) == [], "the run's Jobs, Service and ConfigMap are deleted"


def test_faults_delete_pods_refuse_hangs_and_read_tasks_through_exec(
    run_cli: CliRunner, stack_up: Project, emulator: RunningEmulator
) -> None:
    _postgres_pods(emulator)
    for name in ("app-a", "app-b"):
        add_pod(emulator, name, {"app.kubernetes.io/name": "app"}, phase="Running")
    faults = target(stack_up).faults()
    found = {t.name: t for t in faults.targets()}
    assert {"app", "app-1", "app-2", "postgres-primary", "postgres-standby"} <= set(found)
    assert not any(name.startswith(("locust", "migrate")) for name in found)
    assert (found["app-2"].kind, found["app-2"].role) == ("app", None)
    assert found["postgres-primary"].role == "primary"
    assert found["postgres-standby"].role == "standby"
    assert faults.refusal("kill", found["app-2"]) is None
    assert "not supported on Kubernetes" in (faults.refusal("stop", found["app-1"]) or "")
    assert faults.serving("app-2")  # the controller marked every workload ready

    injected = faults.kill(found["app-2"])
    assert (injected.kind, injected.handle) == ("kill", "app-b")
    assert "app-b deleted (grace period 0)" in injected.detail
    assert sorted(p["metadata"]["name"] for p in emulator.objects("pods")) == [
        "app-a",
        "postgres-primary-0",
        "postgres-standby-0",
        "postgres-standby-1",
    ]
    deletes = [r for r in emulator.requests() if r.method.name == "DELETE"]
    assert deletes and "gracePeriodSeconds=0" in str(deletes[-1].url)
    assert faults.restarts() == {}  # a replacement pod starts from zero: no count to report

    rows = [{"id": 7, "title": "t", "description": None, "status": "pending"}]
    emulator.emulator.exec_results["postgres-primary-0"] = (json.dumps(rows) + "\n", "", 0)
    assert faults.read_tasks([7, 8]) == {7: ("t", None, "pending")}
    pod, container, argv = emulator.emulator.execs[-1]
    assert (pod, container) == ("postgres-primary-0", "main")
    assert "ANY('{7,8}'::bigint[])" in argv[-1]
    emulator.emulator.exec_results["postgres-primary-0"] = ("", "relation missing\n", 1)
    with pytest.raises(TargetError, match="relation missing"):
        faults.read_tasks([7])

    # The drill refuses a hang before any load, with one line (the target's limit: not exit 2).
    result = run_cli(
        "drill", "--fault", "stop:app@2s+2s", "--duration", "10s", "--target", "kubernetes",
        "--context", "kmock", "-p", str(stack_up.root),
    )  # fmt: skip
    assert result.exit_code == Unsupported("x").exit_code, result.stderr
    assert "not supported on Kubernetes" in _one_error_line(result.stderr)
    assert _leftovers(emulator) == []  # no load generator was started
