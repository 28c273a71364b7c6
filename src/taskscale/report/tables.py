"""The report's tables as plain rows: the terminal, Markdown and HTML forms all render these."""

from __future__ import annotations

from dataclasses import dataclass

from taskscale.report.model import Report, Totals


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


def all_tables(report: Report) -> list[TableData]:
    tables = [
        endpoint_table(report),
        sweep_table(report),
        slo_table(report),
        baseline_table(report),
    ]
    return [table for table in tables if table is not None]


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
