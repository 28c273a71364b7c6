"""Telemetry of a stack on Kubernetes, read through the API server (the kubeconfig's rights).

- The pods: one list of the namespace per sample (ready app pods, the worker, PostgreSQL).
- Each ready app pod's and the worker's ``/metrics`` through a port-forward tunnel (the API's
  ``pods/portforward``), in parallel, ``SCRAPE_TIMEOUT_S`` each. Not through the API server's
  pod proxy (``pods/NAME:PORT/proxy/metrics``): that proxy is Go's ``httputil.ReverseProxy``,
  which adds X-Forwarded-For, and the generated app answers 404 to any /metrics request that
  carries it (proxied requests come from the load balancer). A tunnel carries the request's
  bytes unchanged, so the app sees a local scrape. An app pod's tunnel is kept between samples
  (HTTP keep-alive: one websocket per pod for the whole run); the worker's small server closes
  every connection, so its tunnel is opened each sample. App pods are asked by name for the
  series read; the first is asked for the outbox backlog only while the worker does not
  report it (``replica_backlog_wanted``: counting the outbox is a query on the primary).
- Replication lag per standby from the primary pod's ``pg_stat_replication`` through pod exec
  (the query ``replicate status`` runs, ``kube/replication.py``), every ``LAG_EVERY_S`` in the
  background: an exec starts a process in the pod, too costly each second. Samples in between
  repeat the last reading (the report says so).
- CPU per pod from the metrics API (``metrics.k8s.io``, served by metrics-server): each pod's
  containers summed, as percent of one core. metrics-server averages over its own window
  (its resolution, 15-60 s), so the line moves in steps; without it, one note and no CPU.

Requests per replica are keyed by pod name (the app's INSTANCE_ID on this target). Whatever
cannot be read becomes a note of its sample; nothing here raises because a pod is down.
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from typing import TYPE_CHECKING, Any

from taskscale.errors import TargetError
from taskscale.targets.capabilities import TelemetrySource
from taskscale.targets.kube import replication
from taskscale.targets.kube.api import KubeApiError, Tunnel
from taskscale.targets.telemetry import (
    ReplicaReading,
    StandbyLag,
    TelemetrySample,
    WorkerReading,
    app_metrics_path,
    replica_backlog_wanted,
    replica_reading,
    worker_reading,
)

if TYPE_CHECKING:
    from taskscale.targets.kube.namespace import Namespace

SCRAPE_TIMEOUT_S = 1.5
LAG_EVERY_S = 5.0
LAG_TIMEOUT_S = 5.0
# After the metrics API was missing or failing, ask again this much later.
METRICS_RETRY_S = 10.0
NAME_LABEL = "app.kubernetes.io/name"
ROLE_LABEL = "taskscale.dev/role"
METRICS_PODS = "/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods"
NO_METRICS_SERVER = "no metrics-server (metrics.k8s.io): no CPU"
# Where deploy/k8s says a pod serves /metrics (the Prometheus scrape annotations).
PORT_ANNOTATION = "prometheus.io/port"
PATH_ANNOTATION = "prometheus.io/path"
_SUFFIXES = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1.0}


def cpu_cores(quantity: str) -> float:
    """A CPU quantity of the metrics API (``12345678n``, ``250m``, ``1``) in cores;
    ValueError when it is not one."""
    text = quantity.strip()
    suffix = text[-1] if text and text[-1].isalpha() else ""
    if suffix not in _SUFFIXES:
        raise ValueError(f"unknown CPU unit in {quantity!r}")
    return float(text[: len(text) - len(suffix)]) * _SUFFIXES[suffix]


def _ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _labels(pod: dict[str, Any]) -> dict[str, str]:
    return dict(pod["metadata"].get("labels") or {})


def _name(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["name"])


def metrics_endpoint(pod: dict[str, Any]) -> tuple[int, str] | None:
    """(port, path) of the pod's /metrics: its scrape annotations, else its first port."""
    annotations = pod["metadata"].get("annotations") or {}
    path = str(annotations.get(PATH_ANNOTATION) or "/metrics")
    port = annotations.get(PORT_ANNOTATION)
    if port is None:
        ports = [p for c in pod["spec"].get("containers", []) for p in c.get("ports") or []]
        port = ports[0].get("containerPort") if ports else None
    try:
        return (int(port), path) if port is not None else None
    except ValueError:
        return None


class _Scraper:
    """One pod's /metrics over a port-forward tunnel, kept open while the pod keeps the
    connection alive (used by one thread at a time)."""

    def __init__(self, ns: Namespace, pod: str, port: int, path: str) -> None:
        self.ns = ns
        self.pod = pod
        self.port = port
        self.path = path
        self.shown = path.partition("?")[0]  # in messages: the route, not the series asked
        self._conn: http.client.HTTPConnection | None = None
        self._tunnel: Tunnel | None = None

    def get(self, path: str | None = None) -> str:
        """The /metrics text (at ``path``, the pod's own path with a query, when given);
        TargetError (one line) when it cannot be read."""
        reused = self._conn is not None
        try:
            return self._get(path or self.path)
        except (OSError, http.client.HTTPException) as exc:
            said = self._tunnel.error() if self._tunnel is not None else None
            self.close()
            if reused and not isinstance(exc, TimeoutError):
                return self.get(path)  # the kept connection went stale (the pod closed it)
            reason = (said or "").strip() or str(exc) or type(exc).__name__
            raise TargetError(f"{self.pod} did not answer {self.shown}: {reason}") from exc

    def _get(self, path: str) -> str:
        if self._conn is None:
            self._tunnel = self.ns.api.port_forward(
                self.ns.name, self.pod, self.port, timeout=SCRAPE_TIMEOUT_S
            )
            conn = http.client.HTTPConnection("localhost", self.port, timeout=SCRAPE_TIMEOUT_S)
            conn.sock = self._tunnel.sock
            self._conn = conn
        self._conn.request("GET", path, headers={"Accept": "text/plain"})
        response = self._conn.getresponse()
        body = response.read()
        if response.will_close:
            self.close()
        if response.status != 200:
            raise TargetError(f"{self.pod} answered {self.shown} with HTTP {response.status}")
        return body.decode(errors="replace")

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        if self._tunnel is not None:
            with contextlib.suppress(Exception):
                self._tunnel.sock.close()
        self._conn = None
        self._tunnel = None


class KubeTelemetry(TelemetrySource):
    def __init__(self, namespace: Callable[[], Namespace]) -> None:
        """``namespace`` gives the client when the first sample needs it."""
        self._namespace = namespace
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="kube-telemetry")
        self._scrapers: dict[str, _Scraper] = {}
        # A pod whose previous scrape has not returned is not asked again until it does.
        self._busy: dict[str, Future[str]] = {}
        self._lock = threading.Lock()
        self._lag: list[StandbyLag] = []
        self._lag_note: str | None = None
        self._lag_at = float("-inf")
        self._lag_job: Future[None] | None = None
        self._metrics_missing_at = float("-inf")
        self._window: str | None = None
        self._lag_reads = 0
        self._last_worker: WorkerReading | None = None

    @property
    def ns(self) -> Namespace:
        return self._namespace()

    def sample(self) -> TelemetrySample:
        at = time.time()
        notes: list[str] = []
        try:
            pods = self.ns.items("pods")
        except TargetError as exc:
            return TelemetrySample(at=at, notes=[f"cannot list the pods: {exc.message}"])
        pods.sort(key=_name)
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for pod in pods:
            by_kind.setdefault(_labels(pod).get(NAME_LABEL, ""), []).append(pod)
        apps = [p for p in by_kind.get("app", []) if _ready(p)]
        notes += [
            f"app pod {_name(p)} is not ready" for p in by_kind.get("app", []) if p not in apps
        ]
        workers = [p for p in by_kind.get("worker", []) if _ready(p)]
        self._forget({_name(p) for p in [*apps, *workers[:1]]})
        cpu_job = self._pool.submit(self._cpu) if self._metrics_due() else None
        backlog = replica_backlog_wanted(self._last_worker)
        jobs = {
            _name(p): self._scrape(p, notes, backlog=backlog and i == 0)
            for i, p in enumerate([*apps, *workers[:1]])
        }
        self._refresh_lag(by_kind.get("postgres", []))
        pending: list[Future[Any]] = [j for j in jobs.values() if j is not None]
        if cpu_job is not None:
            pending.append(cpu_job)
        if self._lag_reads == 0 and self._lag_job is not None:
            pending.append(self._lag_job)  # the first sample waits for the first lag reading
        done, _ = wait_all(pending, timeout=SCRAPE_TIMEOUT_S + 1)
        texts: dict[str, str] = {}
        for name, job in jobs.items():
            if job is None:
                continue
            if job not in done:
                notes.append(f"{name} did not answer /metrics within {SCRAPE_TIMEOUT_S:g}s")
                continue
            try:
                texts[name] = job.result()
            except TargetError as exc:
                notes.append(exc.message)
        replicas: list[ReplicaReading] = [
            replica_reading(_name(p), texts[_name(p)]) for p in apps if _name(p) in texts
        ]
        worker_text = texts.get(_name(workers[0])) if workers else None
        cpu: dict[str, float] = {}
        if cpu_job is None:
            notes.append(NO_METRICS_SERVER)
        elif cpu_job in done:
            try:
                cpu = cpu_job.result()
            except TargetError as exc:
                notes.append(exc.message)
        else:
            notes.append(f"the metrics API did not answer within {SCRAPE_TIMEOUT_S + 1:g}s")
        with self._lock:
            standbys = list(self._lag)
            if self._lag_note:
                notes.append(self._lag_note)
        self._last_worker = worker_reading(worker_text) if worker_text is not None else None
        return TelemetrySample(
            at=at,
            replicas=replicas,
            standbys=standbys,
            worker=self._last_worker,
            cpu_percent=cpu,
            notes=notes,
        )

    def notes(self) -> list[str]:
        said = []
        if self._lag_reads:
            said.append(
                f"replication lag is read every {LAG_EVERY_S:g}s (psql through pod exec on the "
                "primary): the samples in between repeat the last reading"
            )
        if self._window:
            said.append(
                f"CPU per pod comes from metrics-server, averaged over its {self._window} window"
            )
        return said

    # ------------------------------------------------------------------ /metrics

    def _scrape(
        self, pod: dict[str, Any], notes: list[str], *, backlog: bool = False
    ) -> Future[str] | None:
        """Ask ``pod`` for its /metrics on a pool thread (an app pod by name for the series
        read, and the outbox backlog when ``backlog``)."""
        name = _name(pod)
        busy = self._busy.get(name)
        if busy is not None and not busy.done():
            notes.append(f"{name}: the previous /metrics read has not returned yet")
            return None
        scraper = self._scrapers.get(name)
        if scraper is None:
            endpoint = metrics_endpoint(pod)
            if endpoint is None:
                notes.append(f"{name} declares no port to read /metrics on")
                return None
            port, path = endpoint
            scraper = self._scrapers[name] = _Scraper(self.ns, name, port, path)
        asked: str | None = None
        if _labels(pod).get(NAME_LABEL) == "app":  # the series it reads, by name
            asked = app_metrics_path(backlog=backlog, path=scraper.path)
        job = self._busy[name] = self._pool.submit(scraper.get, asked)
        return job

    def _forget(self, live: set[str]) -> None:
        """Close the tunnels of pods that are gone or no longer ready."""
        for name in [n for n in self._scrapers if n not in live]:
            busy = self._busy.get(name)
            if busy is None or busy.done():
                self._scrapers.pop(name).close()
                self._busy.pop(name, None)

    # ------------------------------------------------------------------ PostgreSQL

    def _refresh_lag(self, postgres: list[dict[str, Any]]) -> None:
        standbys = [p for p in postgres if _labels(p).get(ROLE_LABEL) == "standby"]
        primary = next(
            (
                p
                for p in postgres
                if _labels(p).get(ROLE_LABEL) == "primary"
                and (p.get("status") or {}).get("phase") == "Running"
            ),
            None,
        )
        if not standbys:
            with self._lock:
                self._lag, self._lag_note = [], None
            return
        if primary is None:
            with self._lock:
                self._lag = []
                self._lag_note = "no running PostgreSQL primary pod: no replication lag"
            return
        now = time.monotonic()
        if now - self._lag_at < LAG_EVERY_S or (
            self._lag_job is not None and not self._lag_job.done()
        ):
            return
        self._lag_at = now
        self._lag_job = self._pool.submit(self._read_lag, primary, standbys)

    def _read_lag(self, primary: dict[str, Any], standbys: list[dict[str, Any]]) -> None:
        note: str | None = None
        lags: list[StandbyLag] = []
        try:
            senders = replication.ask_postgres(self.ns, primary, timeout=LAG_TIMEOUT_S).senders
        except TargetError as exc:
            note = f"the primary {_name(primary)} did not answer pg_stat_replication: {exc.message}"
        else:
            by_ip = {replication.pod_ip(p): _name(p) for p in standbys}
            for addr, sender in sorted(senders.items()):
                standby = by_ip.get(addr) or f"{sender.application_name}@{addr}"
                lags.append(StandbyLag(standby, sender.lag_bytes, sender.replay_lag_seconds))
        with self._lock:
            self._lag_reads += 1
            self._lag_note = note
            self._lag = lags

    # ------------------------------------------------------------------ CPU

    def _metrics_due(self) -> bool:
        return time.monotonic() - self._metrics_missing_at >= METRICS_RETRY_S

    def _cpu(self) -> dict[str, float]:
        try:
            data = self.ns.api.request(
                "GET", METRICS_PODS.format(ns=self.ns.name), timeout=SCRAPE_TIMEOUT_S
            )
        except KubeApiError as exc:
            if exc.status in (404, 503):  # not installed, or registered and not serving
                self._metrics_missing_at = time.monotonic()
                raise TargetError(NO_METRICS_SERVER) from exc
            raise
        usage: dict[str, float] = {}
        for item in data.get("items") or []:
            try:
                cores = sum(cpu_cores(c["usage"]["cpu"]) for c in item.get("containers") or [])
            except (KeyError, TypeError, ValueError):
                continue
            usage[str(item["metadata"]["name"])] = round(cores * 100, 1)
            self._window = self._window or item.get("window")
        return usage

    def close(self) -> None:
        for scraper in self._scrapers.values():
            scraper.close()
        self._scrapers.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
