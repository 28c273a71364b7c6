"""Server telemetry on the Kubernetes target, against kmock's emulator: /metrics read through
port-forward tunnels the emulator carries to real servers running the generated project's own
metrics code (tests/kubernetes/replica_app.py), replication lag through exec, CPU from the
metrics API; and each part that cannot be read becoming a note."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from taskscale import proc
from taskscale.config import Project
from taskscale.loadtest.telemetry import TelemetrySampler
from taskscale.targets.kube.telemetry import NO_METRICS_SERVER, KubeTelemetry, cpu_cores
from tests.conftest import CliRunner
from tests.integration.loadtest_servers import free_port
from tests.kubernetes import test_cluster_ops
from tests.kubernetes.conftest import needs_kubectl
from tests.kubernetes.emulator import RunningEmulator
from tests.kubernetes.test_cluster_ops import FakeLocust, _answer, _postgres_pods
from tests.kubernetes.test_target import add_pod, target

pytestmark = [pytest.mark.kubernetes, needs_kubectl]
METRICS = "get /apis/metrics.k8s.io/v1beta1/namespaces/tasks-api/pods"
READY = [{"type": "Ready", "status": "True"}]
SCRIPT = Path(__file__).with_name("replica_app.py")
stack_up = test_cluster_ops.stack_up


class Servers:
    """Real HTTP servers from the generated project's code, one per pod name."""

    def __init__(self, root: Path, logs: Path) -> None:
        self.root = root
        self.logs = logs
        self.ports: dict[str, int] = {}
        self._pids: list[int] = []

    def start(self, pod: str, role: str) -> int:
        port = free_port()
        argv = [sys.executable, str(SCRIPT), str(self.root), str(port), role]
        self._pids.append(proc.spawn(argv, log_path=self.logs / f"{pod}.log", cwd=self.root))
        self.ports[pod] = port
        return port

    def wait(self) -> None:
        def up() -> bool:
            try:
                for port in self.ports.values():
                    httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=0.5, trust_env=False)
            except httpx.HTTPError:
                return False
            return True

        proc.wait_until(up, timeout=30, what="the replica servers")

    def stop(self) -> None:
        for pid in self._pids:
            proc.terminate(pid, timeout=5)


@pytest.fixture
def servers(k8s_project: Project, tmp_path: Path) -> Iterator[Servers]:
    running = Servers(k8s_project.root, tmp_path / "servers")
    try:
        yield running
    finally:
        running.stop()


def _stack_pods(emulator: RunningEmulator, servers: Servers, *, refusing: str = "") -> None:
    """Two ready app pods, one not ready, the worker, PostgreSQL; each serving pod reachable
    through the emulator's tunnels, except ``refusing``."""
    annotations = {"prometheus.io/port": "8000", "prometheus.io/path": "/metrics"}
    for name in ("app-a", "app-b"):
        add_pod(emulator, name, {"app.kubernetes.io/name": "app"}, conditions=READY)
        servers.start(name, name)
    add_pod(emulator, "app-c", {"app.kubernetes.io/name": "app"}, conditions=[])
    add_pod(emulator, "worker-a", {"app.kubernetes.io/name": "worker"}, conditions=READY)
    servers.start("worker-a", "worker")
    for name in ("app-a", "app-b", "app-c", "worker-a"):  # the scrape annotations of deploy/k8s
        httpx.patch(
            f"{emulator.url}/api/v1/namespaces/tasks-api/pods/{name}",
            json={"metadata": {"annotations": annotations}},
            headers={"Content-Type": "application/merge-patch+json"},
        ).raise_for_status()
    _postgres_pods(emulator)
    sender = {
        "application_name": "walreceiver",
        "client_addr": "10.0.0.11",
        "state": "streaming",
        "lag_bytes": 4096,
        "replay_lag_seconds": 0.25,
        "sync_state": "async",
    }
    emulator.emulator.exec_results["postgres-primary-0"] = (_answer(senders=[sender]), "", 0)
    servers.wait()
    emulator.emulator.backends.update(
        {pod: ("127.0.0.1", port) for pod, port in servers.ports.items() if pod != refusing}
    )


def _pod_metrics(emulator: RunningEmulator) -> None:
    def usage(cpu: str) -> dict[str, object]:
        return {"name": "main", "usage": {"cpu": cpu, "memory": "64Mi"}}

    items = [
        {"metadata": {"name": "app-a"}, "window": "15s", "containers": [usage("250m")]},
        {"metadata": {"name": "app-b"}, "window": "15s", "containers": [usage("120000000n")]},
        {
            "metadata": {"name": "postgres-primary-0"},
            "window": "15s",
            "containers": [usage("1"), usage("500000u")],
        },
    ]
    emulator.call(lambda: emulator.emulator[METRICS] << {"kind": "PodMetricsList", "items": items})


def _load(servers: Servers, pod: str, seconds: float) -> None:
    """Requests to one replica for ``seconds`` (at most 200), while the sampler runs."""
    deadline = time.monotonic() + seconds
    with httpx.Client(base_url=f"http://127.0.0.1:{servers.ports[pod]}", trust_env=False) as c:
        for i in range(200):
            if time.monotonic() >= deadline:
                break
            c.get(f"/tasks/{i}").raise_for_status()
            time.sleep(0.02)


def test_cpu_quantities() -> None:
    assert cpu_cores("250m") == pytest.approx(0.25)
    assert cpu_cores("120000000n") == pytest.approx(0.12)
    assert cpu_cores("1500u") == pytest.approx(0.0015)
    assert cpu_cores("2") == 2.0
    with pytest.raises(ValueError, match="unknown CPU unit"):
        cpu_cores("3Ki")


def test_cli_loadtest_report_has_kubernetes_telemetry(
    run_cli: CliRunner,
    stack_up: Project,
    emulator: RunningEmulator,
    servers: Servers,
    tmp_path: Path,
) -> None:
    _stack_pods(emulator, servers)
    _pod_metrics(emulator)
    out = tmp_path / "run"
    with FakeLocust(emulator, hold=3.5, during=lambda: _load(servers, "app-a", 3.0)):
        result = run_cli(
            "loadtest", "--target", "kubernetes", "--context", "kmock", "-p", str(stack_up.root),
            "--processes", "2", "-d", "2s", "-u", "4", "-o", str(out), "--json",
        )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert not any("offers no server-side telemetry" in n for n in report["notes"])
    telemetry = report["telemetry"]
    samples = telemetry["samples"]
    assert len(samples) >= 2, telemetry
    # Requests per replica, by pod name: app-a took the load, app-b none; the not-ready
    # app-c is not scraped, and the scrapes' own /metrics requests are not counted as load.
    rates = [s["requests_per_replica"] for s in samples[1:]]
    assert all(set(r) == {"app-a", "app-b"} for r in rates), rates
    assert sum(r["app-a"] for r in rates) > 0 and all(r["app-b"] == 0 for r in rates)
    assert any(s["cache_hit_ratio"] == 1.0 for s in samples[1:])
    assert all(s["db_pool_in_use"] == 6 for s in samples), "3 in use on each of 2 replicas"
    # The worker's real series: 5 events more per scrape, a consumer lag of 7.
    assert all(s["consumer_lag"] == 7 for s in samples)
    assert any((s["worker_processed_per_s"] or 0) > 0 for s in samples[1:])
    # Lag per standby (the pod whose IP streams), read through exec on the primary.
    assert samples[0]["replication_lag_bytes"] == {"postgres-standby-0": 4096}
    assert samples[0]["replication_lag_seconds"] == {"postgres-standby-0": 0.25}
    execs = [pod for pod, _, _ in emulator.emulator.execs]
    assert execs and set(execs) == {"postgres-primary-0"}
    assert len(execs) < len(samples), "the lag is not read through exec every second"
    # CPU per pod from the metrics API, percent of one core.
    assert samples[-1]["cpu_percent"] == {"app-a": 25.0, "app-b": 12.0, "postgres-primary-0": 150.0}
    notes = telemetry["notes"]
    assert any(n.startswith("app pod app-c is not ready") for n in notes), notes
    assert any("every 5s" in n for n in notes) and any("15s window" in n for n in notes)
    assert not any("did not answer" in n or NO_METRICS_SERVER in n for n in notes), notes
    # One tunnel per app pod for the run (kept alive); the worker's server closes each one.
    tunnels = emulator.emulator.port_forwards
    assert tunnels.count(("app-a", 8000)) == tunnels.count(("app-b", 8000)) == 1, tunnels
    assert tunnels.count(("worker-a", 8000)) >= len(samples) - 1
    assert "app-c" not in {pod for pod, _ in tunnels}
    html = (out / "report.html").read_text()
    assert "app-a" in html


def test_pods_that_do_not_answer_and_no_metrics_server_become_notes(
    stack_up: Project, emulator: RunningEmulator, servers: Servers
) -> None:
    _stack_pods(emulator, servers, refusing="app-b")
    emulator.emulator.exec_results["postgres-primary-0"] = ("", "psql: error: no socket\n", 2)
    source = target(stack_up).telemetry()
    assert isinstance(source, KubeTelemetry)
    sampler = TelemetrySampler(source, interval=0.2)
    sampler.start()
    try:
        assert proc.poll_until(lambda: len(sampler.samples) >= 3, 15)
    finally:
        sampler.stop()
    telemetry = sampler.telemetry(time.time())
    sample = sampler.samples[-1]
    assert [r.name for r in sample.replicas] == ["app-a"]
    assert sample.standbys == [] and sample.cpu_percent == {}
    notes = " | ".join(telemetry.notes)
    assert "app-b did not answer /metrics: error forwarding port 8000 to pod app-b" in notes
    assert "the primary postgres-primary-0 did not answer pg_stat_replication: psql exited 2" in (
        notes
    )
    assert f"{NO_METRICS_SERVER} (" in notes
    # The metrics API was asked once, not every sample, once it said it is not there.
    asked = [r for r in emulator.requests() if r.url.path.startswith("/apis/metrics.k8s.io/")]
    assert len(asked) == 1, asked
