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

    @property
    def failed_slos(self) -> list[SloResult]:
        return [result for result in self.slo if not result.passed]

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
