"""Compare a run with a baseline report: delta and percent per metric, regressions flagged.

A latency percentile regresses when it grew by more than ``threshold_pct`` percent; throughput
when it fell by more than that; the error rate when it rose by more than 0.1 percentage points.
``max`` is shown but never flagged: one slow request moves it, so it is noise in short runs.
"""

from __future__ import annotations

from taskscale.report.model import Comparison, ComparisonRow, Report, Totals

FLAGGED_LATENCY = ("p50", "p90", "p95", "p99", "p999")
ENDPOINT_LATENCY = ("p50", "p95", "p99")
ERROR_RATE_NOISE_PP = 0.1


def _row(
    scope: str, metric: str, baseline: float, current: float, threshold_pct: float
) -> ComparisonRow:
    delta = current - baseline
    pct = (delta / baseline * 100.0) if baseline else None
    regression = improvement = False
    if metric == "rps":
        regression = pct is not None and pct < -threshold_pct
        improvement = pct is not None and pct > threshold_pct
    elif metric == "error_rate":
        regression = delta > ERROR_RATE_NOISE_PP
        improvement = delta < -ERROR_RATE_NOISE_PP
    elif metric in FLAGGED_LATENCY:
        regression = pct is not None and pct > threshold_pct
        improvement = pct is not None and pct < -threshold_pct
    return ComparisonRow(
        scope=scope,
        metric=metric,
        baseline=round(baseline, 3),
        current=round(current, 3),
        delta=round(delta, 3),
        delta_pct=round(pct, 1) if pct is not None else None,
        regression=regression,
        improvement=improvement,
    )


def _rows(
    scope: str, base: Totals, cur: Totals, latencies: tuple[str, ...], threshold_pct: float
) -> list[ComparisonRow]:
    rows = [
        _row(scope, "rps", base.rps, cur.rps, threshold_pct),
        _row(scope, "error_rate", base.error_rate, cur.error_rate, threshold_pct),
    ]
    for key in latencies:
        rows.append(
            _row(
                scope,
                key,
                float(getattr(base.latency_ms, key)),
                float(getattr(cur.latency_ms, key)),
                threshold_pct,
            )
        )
    return rows


def compare(current: Report, baseline: Report, *, path: str, threshold_pct: float) -> Comparison:
    """Rows for the totals (every percentile and max) and each endpoint both runs measured."""
    rows: list[ComparisonRow] = []
    if current.total is not None and baseline.total is not None:
        rows += _rows(
            "total", baseline.total, current.total, (*FLAGGED_LATENCY, "max"), threshold_pct
        )
    base_endpoints = {e.label: e for e in baseline.endpoints}
    for endpoint in current.endpoints:
        base = base_endpoints.get(endpoint.label)
        if base is not None and base.requests and endpoint.requests:
            rows += _rows(endpoint.label, base, endpoint, ENDPOINT_LATENCY, threshold_pct)
    return Comparison(baseline_path=path, threshold_pct=threshold_pct, rows=rows)
