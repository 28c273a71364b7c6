"""The load-test report: one typed model, serialised as ``report.json`` (versioned schema).

Every other form (terminal, Markdown, HTML, JUnit) renders this model and nothing else, so they
cannot disagree. Bump ``SCHEMA_VERSION`` on any incompatible change; readers reject other major
versions with a clear message.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Latency(_Model):
    """Milliseconds, from HDR histograms (exact to 0.1 %)."""

    p50: float
    p90: float
    p95: float
    p99: float
    p999: float
    max: float
    mean: float


class Totals(_Model):
    requests: int
    failures: int
    # Failed without any HTTP response (connection refused/reset, timeout): not seen by a server.
    unanswered: int = 0
    error_rate: float = Field(description="failures / requests, percent")
    rps: float
    latency_ms: Latency


class EndpointStats(Totals):
    method: str
    name: str
    excluded: bool = Field(
        default=False,
        description="a setup request (name ending in '(setup)'): not in the totals, the "
        "timeline or the SLO gates",
    )

    @property
    def label(self) -> str:
        """``METHOD name``; names that already start with their method are kept as they are."""
        if self.name.startswith(f"{self.method} "):
            return self.name
        return f"{self.method} {self.name}"


class TimelinePoint(_Model):
    t: int = Field(description="seconds since the first request")
    rps: float
    p50: float | None
    p95: float | None
    p99: float | None
    errors: int
    users: int


class SloResult(_Model):
    expr: str
    passed: bool
    value: float | None
    threshold: float
    unit: str
    scope: str = "total"
    detail: str | None = None


class Environment(_Model):
    taskscale_version: str
    app_version: str | None = None
    target: str
    replicas: int | None = None
    cpu_count: int
    host: str
    scenario: str
    locustfile: str
    users: int
    spawn_rate: float
    duration_s: float
    rate: float | None = None
    processes: int
    locust_version: str
    python_version: str
    platform: str
    started_at: str
    finished_at: str


class GeneratorLoad(_Model):
    """CPU of the load generator's own processes, sampled once a second."""

    processes: int
    cpu_count: int
    # Sum over generator processes, percent of one core (200 = two cores busy).
    cpu_percent_samples: list[float]
    # The busiest single generator process (a Locust worker is one gevent thread: ~100 % = full).
    busiest_process_samples: list[float]
    host_cpu_percent_samples: list[float] = Field(default_factory=list)
    cpu_percent_peak: float
    saturated: bool
    note: str | None = None
    # When the first sample was taken (epoch seconds): places the samples on the timeline.
    first_sample_epoch: float | None = None


class ComparisonRow(_Model):
    scope: str
    metric: str
    baseline: float
    current: float
    delta: float
    delta_pct: float | None
    regression: bool
    improvement: bool = False


class Comparison(_Model):
    baseline_path: str
    threshold_pct: float
    rows: list[ComparisonRow]

    @property
    def regressions(self) -> list[ComparisonRow]:
        return [row for row in self.rows if row.regression]


class SweepStep(_Model):
    replicas: int
    requests: int
    failures: int
    error_rate: float
    rps: float
    p50: float
    p95: float
    p99: float
    efficiency: float | None = Field(description="rps_n / (n * rps_1)")
    generator_saturated: bool
    run_dir: str
    slo_passed: bool = True


class Sweep(_Model):
    replicas: list[int]
    steps: list[SweepStep]
    note: str | None = None


class FailoverResult(_Model):
    """What ``--failover`` did about a killed primary (times in seconds on the timeline)."""

    mode: Literal["auto", "manual", "none"]
    started_at_s: float | None = None
    finished_at_s: float | None = None
    old_primary: str | None = None
    new_primary: str | None = None
    error: str | None = None


class FaultResult(_Model):
    """One injected fault and what clients saw. Times are seconds on the report's timeline
    (``origin_epoch``); see docs/drill.md for how each is derived from the data."""

    kind: str
    service: str
    spec: str = Field(description="the fault as scheduled, e.g. kill:app-2@10s")
    detail: str | None = Field(default=None, description="what was hit: a pid, container, pod")
    injected_at_s: float
    resumed_at_s: float | None = Field(default=None, description="stop: when it was resumed")
    detected_at_s: float | None = Field(
        default=None, description="first failed or slow request, or failed probe, after it"
    )
    detected_by: str | None = None
    recovered_at_s: float | None = Field(
        default=None, description="first success of every operation type once sustained"
    )
    rto_s: float | None = Field(
        default=None, description="injection to sustained success (None: not within the run)"
    )
    service_back_at_s: float | None = Field(
        default=None, description="when the target's probe saw the service serve again"
    )
    window_s: list[float] = Field(default_factory=list, description="[start, end] measured")
    requests_in_window: int = 0
    failed_requests: dict[str, int] = Field(default_factory=dict)
    slow_requests: dict[str, int] = Field(default_factory=dict)
    p99_before_ms: float | None = None
    p99_window_ms: float | None = None
    failover: FailoverResult | None = None
    restarts: int | None = Field(
        default=None,
        description="restarts the target's restart policy made of the service during the "
        "drill (local: the supervisor's count in `status`); None: the target keeps no count",
    )
    note: str | None = None


class Rpo(_Model):
    """Acknowledged writes read back from the current primary after the drill."""

    acknowledged_writes: int
    lost: int
    changed: int
    unverified: int = 0
    ids: list[int] = Field(default_factory=list, description="first few lost or changed ids")
    source: str = ""
    note: str | None = None

    @property
    def value(self) -> int:
        """The RPO gate's value: acknowledged writes not read back as written."""
        return self.lost + self.changed


class DrillInfo(_Model):
    """How the drill measured (docs/drill.md)."""

    name: str | None = None
    failover: Literal["auto", "manual", "none"] = "none"
    bucket_ms: int
    slow_ms: float
    sustain_s: float
    writers: int
    after: list[str] = Field(default_factory=list, description="the stack after the drill")


class TelemetryPoint(_Model):
    t: float = Field(description="seconds on the report's timeline")
    requests_per_replica: dict[str, float] = Field(default_factory=dict)
    replication_lag_bytes: dict[str, int | None] = Field(default_factory=dict)
    replication_lag_seconds: dict[str, float | None] = Field(default_factory=dict)
    cache_hit_ratio: float | None = None
    db_pool_in_use: float | None = None
    outbox_backlog: float | None = None
    oldest_unpublished_s: float | None = None
    consumer_lag: float | None = None
    worker_processed_per_s: float | None = None
    cpu_percent: dict[str, float] = Field(default_factory=dict)


class Telemetry(_Model):
    """What the servers did, sampled once a second during the load (docs/loadtest.md)."""

    interval_s: float
    samples: list[TelemetryPoint] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    sample_ms_median: float | None = Field(
        default=None, description="wall time of one reading (its cost)"
    )


class Report(_Model):
    schema_version: int = SCHEMA_VERSION
    kind: Literal["run", "sweep"] = "run"
    total: Totals | None
    endpoints: list[EndpointStats] = Field(default_factory=list)
    timeline: list[TimelinePoint] = Field(default_factory=list)
    slo: list[SloResult] = Field(default_factory=list)
    environment: Environment
    generator: GeneratorLoad | None = None
    baseline: Comparison | None = None
    sweep: Sweep | None = None
    notes: list[str] = Field(default_factory=list)
    # Epoch seconds of the timeline's t=0 (faults and telemetry are placed on the same axis).
    origin_epoch: float | None = None
    telemetry: Telemetry | None = None
    drill: DrillInfo | None = None
    faults: list[FaultResult] = Field(default_factory=list)
    rpo: Rpo | None = None

    @property
    def failed_slos(self) -> list[SloResult]:
        return [result for result in self.slo if not result.passed]

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
