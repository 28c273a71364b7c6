"""The report's tables as plain rows: the terminal, Markdown and HTML forms all render these."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from taskscale.report.model import FaultResult, Report, TelemetryPoint, Totals


@dataclass(frozen=True)
class TableData:
    title: str
    columns: list[str]
    rows: list[list[str]]


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def num(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}%"


def _totals_row(label: str, totals: Totals) -> list[str]:
    lat = totals.latency_ms
    return [
        label,
        f"{totals.requests:,}",
        f"{totals.failures:,} ({totals.error_rate:.2f}%)",
        num(totals.rps),
        ms(lat.p50),
        ms(lat.p90),
        ms(lat.p95),
        ms(lat.p99),
        ms(lat.p999),
        ms(lat.max),
    ]


ENDPOINT_COLUMNS = [
    "endpoint",
    "requests",
    "failures",
    "req/s",
    "p50 ms",
    "p90 ms",
    "p95 ms",
    "p99 ms",
    "p99.9 ms",
    "max ms",
]


def endpoint_table(report: Report) -> TableData | None:
    if report.total is None:
        return None
    rows = [
        _totals_row(f"{e.label} [excluded]" if e.excluded else e.label, e) for e in report.endpoints
    ]
    rows.append(_totals_row("TOTAL", report.total))
    return TableData("Requests (latency from HDR histograms)", ENDPOINT_COLUMNS, rows)


def slo_table(report: Report) -> TableData | None:
    if not report.slo:
        return None
    rows = []
    for result in report.slo:
        value = "-" if result.value is None else f"{result.value:g} {result.unit}"
        verdict = "PASS" if result.passed else "FAIL"
        rows.append([result.expr, value, verdict, result.detail or ""])
    return TableData("SLO gates", ["gate", "measured", "result", "detail"], rows)


def baseline_table(report: Report) -> TableData | None:
    comparison = report.baseline
    if comparison is None:
        return None
    rows = []
    for row in comparison.rows:
        flag = "REGRESSION" if row.regression else ("better" if row.improvement else "")
        rows.append(
            [
                row.scope,
                row.metric,
                f"{row.baseline:g}",
                f"{row.current:g}",
                f"{row.delta:+g}",
                _pct(row.delta_pct),
                flag,
            ]
        )
    title = (
        f"Compared with {comparison.baseline_path} (noise threshold "
        f"{comparison.threshold_pct:g}%, latency in ms)"
    )
    return TableData(
        title, ["scope", "metric", "baseline", "current", "delta", "delta %", "flag"], rows
    )


def sweep_table(report: Report) -> TableData | None:
    if report.sweep is None:
        return None
    rows = []
    for step in report.sweep.steps:
        rows.append(
            [
                str(step.replicas),
                f"{step.requests:,}",
                f"{step.error_rate:.2f}%",
                num(step.rps),
                ms(step.p50),
                ms(step.p95),
                ms(step.p99),
                "-" if step.efficiency is None else f"{step.efficiency * 100:.0f}%",
                "yes" if step.generator_saturated else "no",
                "PASS" if step.slo_passed else "FAIL",
            ]
        )
    return TableData(
        "Scaling: throughput and latency vs replicas (efficiency = rps_n / (n * rps_1))",
        [
            "replicas",
            "requests",
            "errors",
            "req/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "efficiency",
            "generator saturated",
            "SLOs",
        ],
        rows,
    )


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _counts(values: dict[str, int]) -> str:
    if not values:
        return "0"
    total = sum(values.values())
    parts = ", ".join(f"{name} {count}" for name, count in sorted(values.items()))
    return f"{total} ({parts})"


def _rto(fault: FaultResult) -> str:
    return "not recovered" if fault.rto_s is None else f"{fault.rto_s:.2f}"


def _failover(fault: FaultResult) -> str:
    failover = fault.failover
    if failover is None:
        return "-"
    if failover.error:
        return f"{failover.mode}: failed ({failover.error})"
    if failover.new_primary is None:
        return f"{failover.mode}: none happened"
    took = ""
    if failover.started_at_s is not None and failover.finished_at_s is not None:
        took = f" in {failover.finished_at_s - failover.started_at_s:.1f} s"
    return f"{failover.mode}: {failover.new_primary} promoted{took}"


FAULT_COLUMNS = [
    "fault",
    "injected s",
    "detected s",
    "recovered s",
    "RTO s",
    "failed requests",
    "slow requests",
    "p99 before / during ms",
    "service back s",
    "restarts",
    "failover",
]


def fault_table(report: Report) -> TableData | None:
    if not report.faults:
        return None
    rows = []
    for fault in report.faults:
        detected = seconds(fault.detected_at_s)
        if fault.detected_by is not None:
            detected += f" ({fault.detected_by})"
        rows.append(
            [
                fault.spec,
                seconds(fault.injected_at_s),
                detected,
                seconds(fault.recovered_at_s),
                _rto(fault),
                _counts(fault.failed_requests),
                _counts(fault.slow_requests),
                f"{ms(fault.p99_before_ms)} / {ms(fault.p99_window_ms)}",
                seconds(fault.service_back_at_s),
                "-" if fault.restarts is None else str(fault.restarts),
                _failover(fault),
            ]
        )
    title = "Faults (seconds on the report's timeline, which starts at the first measured request"
    title += "; @T in a fault counts from the load's start"
    if report.drill is not None:
        title += (
            f"; RTO = injection to the first {report.drill.sustain_s:g} s with no failed or slow "
            f"(> {report.drill.slow_ms:g} ms) request and a success of every operation type"
        )
    return TableData(title + ")", FAULT_COLUMNS, rows)


def rpo_line(report: Report) -> str | None:
    """The RPO verdict in one sentence (every form shows it)."""
    rpo = report.rpo
    if rpo is None:
        return None
    line = (
        f"RPO: {rpo.lost} of {rpo.acknowledged_writes:,} acknowledged writes lost, "
        f"{rpo.changed} changed"
    )
    if rpo.unverified:
        line += f", {rpo.unverified} could not be read back"
    if rpo.ids:
        line += f" (task ids {', '.join(str(i) for i in rpo.ids)})"
    return line + (f"; read back from {rpo.source}" if rpo.source else "")


def _series(
    points: list[TelemetryPoint], pick: Callable[[TelemetryPoint], float | int | None]
) -> list[float]:
    return [float(v) for v in (pick(p) for p in points) if v is not None]


def _keyed(points: list[TelemetryPoint], field: str, key: str) -> list[float]:
    """The values of one key of a per-name series (``requests_per_replica``...)."""
    values: list[float] = []
    for point in points:
        value = getattr(point, field).get(key)
        if value is not None:
            values.append(float(value))
    return values


def _keys(points: list[TelemetryPoint], field: str) -> list[str]:
    return sorted({key for point in points for key in getattr(point, field)})


def telemetry_table(report: Report) -> TableData | None:
    """Median and peak of each telemetry series (the charts are in the HTML report)."""
    telemetry = report.telemetry
    if telemetry is None or not telemetry.samples:
        return None
    points = telemetry.samples
    rows: list[list[str]] = []

    def add(label: str, values: list[float], digits: int = 1) -> None:
        if values:
            rows.append(
                [label, f"{statistics.median(values):,.{digits}f}", f"{max(values):,.{digits}f}"]
            )

    for name in _keys(points, "requests_per_replica"):
        add(f"req/s {name}", _keyed(points, "requests_per_replica", name))
    for name in _keys(points, "replication_lag_bytes"):
        add(f"replication lag bytes {name}", _keyed(points, "replication_lag_bytes", name), 0)
        add(f"replication lag s {name}", _keyed(points, "replication_lag_seconds", name), 3)
    add("cache hit ratio", _series(points, lambda p: p.cache_hit_ratio), 3)
    add("db pool in use", _series(points, lambda p: p.db_pool_in_use), 0)
    add("outbox backlog", _series(points, lambda p: p.outbox_backlog), 0)
    add("oldest unpublished s", _series(points, lambda p: p.oldest_unpublished_s))
    add("consumer lag", _series(points, lambda p: p.consumer_lag), 0)
    add("worker events/s", _series(points, lambda p: p.worker_processed_per_s))
    for name in _keys(points, "cpu_percent"):
        add(f"CPU % {name}", _keyed(points, "cpu_percent", name))
    if not rows:
        return None
    return TableData(
        f"Server telemetry ({len(points)} samples, one per {telemetry.interval_s:g} s)",
        ["series", "median", "peak"],
        rows,
    )


def all_tables(report: Report) -> list[TableData]:
    tables = [
        fault_table(report),
        endpoint_table(report),
        sweep_table(report),
        slo_table(report),
        baseline_table(report),
        telemetry_table(report),
    ]
    return [table for table in tables if table is not None]


def drill_line(report: Report) -> str | None:
    """Each fault's RTO in one sentence (``rpo_line`` says the RPO)."""
    parts = [f"{f.spec} RTO {_rto(f)}" + ("" if f.rto_s is None else " s") for f in report.faults]
    return "Drill: " + "; ".join(parts) if parts else None


def headline(report: Report) -> str:
    env = report.environment
    target = env.target + (f", {env.replicas} replicas" if env.replicas else "")
    rate = f", target rate {env.rate:g} req/s" if env.rate else ""
    head = (
        f"{env.scenario} scenario against {env.host} ({target}): {env.users} users, "
        f"{env.duration_s:g}s{rate}, {env.processes} Locust processes"
    )
    if report.total is not None:
        t = report.total
        head += (
            f" -> {t.requests:,} requests, {num(t.rps)} req/s, p95 {ms(t.latency_ms.p95)} ms, "
            f"p99 {ms(t.latency_ms.p99)} ms, errors {t.error_rate:.2f}%"
        )
    return head


def environment_rows(report: Report) -> list[list[str]]:
    """``[key, value]`` for every environment field that is set."""
    return [
        [key, str(value)]
        for key, value in report.environment.model_dump().items()
        if value is not None
    ]


def regression_lines(report: Report) -> list[str]:
    """One line per regression against the baseline: scope, metric, baseline -> current."""
    if report.baseline is None:
        return []
    return [
        f"{r.scope} {r.metric} {r.baseline:g} -> {r.current:g} ({r.delta_pct:+.1f}%)"
        for r in report.baseline.regressions
        if r.delta_pct is not None
    ]


def warnings(report: Report) -> list[str]:
    """Saturation and other caveats, shown in every form."""
    items = []
    if report.generator is not None and report.generator.note:
        prefix = "GENERATOR SATURATED: " if report.generator.saturated else ""
        items.append(prefix + report.generator.note)
    items.extend(report.notes)
    return items
