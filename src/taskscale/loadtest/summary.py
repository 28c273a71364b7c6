"""Turn merged HDR metrics into the report's totals, per-endpoint rows and per-second timeline."""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

from taskscale.loadgen.metrics import RunMetrics, Series
from taskscale.report.model import EndpointStats, Latency, TimelinePoint, Totals

PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p95", 95.0),
    ("p99", 99.0),
    ("p999", 99.9),
)


def summarize(hist: HdrHistogram) -> Latency:
    """Percentiles in milliseconds (0 for an empty histogram)."""
    if hist.get_total_count() == 0:
        return Latency(p50=0.0, p90=0.0, p95=0.0, p99=0.0, p999=0.0, max=0.0, mean=0.0)
    values = {key: hist.get_value_at_percentile(pct) / 1000.0 for key, pct in PERCENTILES}
    return Latency(
        **values,
        max=hist.get_max_value() / 1000.0,
        mean=round(hist.get_mean_value() / 1000.0, 3),
    )


def _totals_fields(series: Series, window: float) -> dict[str, object]:
    counts = series.counts
    return {
        "requests": counts.requests,
        "failures": counts.failures,
        "unanswered": counts.unanswered,
        "error_rate": round(counts.failures / counts.requests * 100.0, 3)
        if counts.requests
        else 0.0,
        "rps": round(counts.requests / window, 1) if window else 0.0,
        "latency_ms": summarize(series.hist),
    }


def totals(metrics: RunMetrics) -> Totals:
    return Totals.model_validate(_totals_fields(metrics.total, metrics.window_seconds))


def endpoints(metrics: RunMetrics) -> list[EndpointStats]:
    window = metrics.window_seconds
    return [
        EndpointStats.model_validate(
            {
                "method": method,
                "name": name,
                "excluded": (method, name) in metrics.excluded,
                **_totals_fields(s, window),
            }
        )
        for (method, name), s in sorted(metrics.endpoints.items(), key=lambda kv: kv[0][1])
    ]


def excluded_note(endpoints: list[EndpointStats]) -> list[str]:
    """The line every report form shows when setup requests were left out of the totals."""
    excluded = [e for e in endpoints if e.excluded]
    if not excluded:
        return []
    count = sum(e.requests for e in excluded)
    names = ", ".join(f"{e.label} x{e.requests}" for e in excluded)
    return [
        f"{count} setup request(s) excluded from the totals, the timeline and the SLO gates "
        f"({names}); --include-setup counts them"
    ]


def timeline(metrics: RunMetrics) -> list[TimelinePoint]:
    """One point per wall-clock second (by completion time), gaps filled with zeros."""
    if not metrics.seconds:
        return []
    first, last = min(metrics.seconds), max(metrics.seconds)
    points = []
    for second in range(first, last + 1):
        series = metrics.seconds.get(second)
        if series is None or series.counts.requests == 0:
            points.append(
                TimelinePoint(
                    t=second - first,
                    rps=0,
                    p50=None,
                    p95=None,
                    p99=None,
                    errors=0,
                    users=series.users if series else 0,
                )
            )
            continue
        hist = series.hist
        points.append(
            TimelinePoint(
                t=second - first,
                rps=float(series.counts.requests),
                p50=hist.get_value_at_percentile(50) / 1000.0,
                p95=hist.get_value_at_percentile(95) / 1000.0,
                p99=hist.get_value_at_percentile(99) / 1000.0,
                errors=series.counts.failures,
                users=series.users,
            )
        )
    return points
