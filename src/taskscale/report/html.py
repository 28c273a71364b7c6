"""report.html: one self-contained file (plotly.js inlined once; no network needed to view it).

Charts are Plotly figures; tables and text come from ``tables`` like every other form.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from jinja2 import Environment as Jinja
from jinja2 import select_autoescape

from taskscale.report.model import Report, TelemetryPoint
from taskscale.report.tables import (
    all_tables,
    drill_line,
    environment_rows,
    headline,
    rpo_line,
    warnings,
)

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 2rem auto;
       max-width: 1200px; color: #1f2328; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
.status { display: inline-block; padding: .1rem .6rem; border-radius: .3rem; color: #fff; }
.passed { background: #1a7f37; } .failed { background: #cf222e; }
.warning { background: #fff8c5; border: 1px solid #d4a72c; padding: .6rem 1rem;
           border-radius: .3rem; margin: .6rem 0; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { border: 1px solid #d0d7de; padding: .3rem .5rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f6f8fa; }
td.FAIL, td.REGRESSION { color: #cf222e; font-weight: bold; }
td.PASS { color: #1a7f37; font-weight: bold; }
.chart { margin: 1rem 0; }
.rpo { padding: .4rem .8rem; border-radius: .3rem; display: inline-block; }
.rpo.ok { background: #dafbe1; } .rpo.lost { background: #ffebe9; font-weight: bold; }
</style>
</head>
<body>
<h1>{{ title }} <span class="status {{ status }}">{{ status }}</span></h1>
<p>{{ headline }}</p>
{% if drill %}<p class="drill"><strong>{{ drill }}</strong></p>{% endif %}
{% if rpo %}<p class="rpo {{ rpo_class }}">{{ rpo }}</p>{% endif %}
{% for warning in warnings %}<div class="warning"><strong>Warning:</strong> {{ warning }}</div>
{% endfor %}
{% for table in tables %}
<h2>{{ table.title }}</h2>
<table>
<thead><tr>{% for column in table.columns %}<th>{{ column }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in table.rows %}<tr>
{%- for cell in row %}<td class="{{ cell }}">{{ cell }}</td>{% endfor -%}
</tr>
{% endfor %}</tbody>
</table>
{% endfor %}
{% for chart in charts %}<div class="chart">{{ chart | safe }}</div>
{% endfor %}
<h2>Environment</h2>
<table><tbody>
{% for key, value in environment %}<tr><td>{{ key }}</td><td>{{ value }}</td></tr>
{% endfor %}</tbody></table>
</body>
</html>
"""

_jinja = Jinja(autoescape=select_autoescape(default=True, default_for_string=True))


def _layout(fig: Any, title: str, x: str, y: str) -> Any:
    fig.update_layout(
        title=title,
        xaxis_title=x,
        yaxis_title=y,
        height=360,
        margin={"l": 60, "r": 30, "t": 50, "b": 50},
        legend={"orientation": "h"},
        template="plotly_white",
        # Every series here is a count, a duration or a percentage: axes start at zero, so a
        # steady 6 users is not drawn as a swing between 5.3 and 6.9, nor no errors as -1..1.
        yaxis_rangemode="tozero",
    )
    if getattr(fig.layout, "yaxis2", None) is not None:  # a secondary axis was set up
        fig.update_layout(yaxis2_rangemode="tozero")
    return fig


FAULT_COLOR = "#cf222e"
RECOVERED_COLOR = "#1a7f37"
FAILOVER_COLOR = "#bf8700"


def _mark_faults(fig: Any, report: Report) -> Any:
    """Every fault on a time chart: a red line at a kill, a red band over a stop, an amber
    band over a failover, a green dotted line where sustained success was back."""
    for fault in report.faults:
        label = f"{fault.kind} {fault.service}"
        if fault.kind == "stop":
            end = fault.resumed_at_s if fault.resumed_at_s is not None else fault.window_s[-1]
            fig.add_vrect(
                x0=fault.injected_at_s,
                x1=end,
                fillcolor=FAULT_COLOR,
                opacity=0.12,
                line_width=0,
                annotation_text=label,
                annotation_position="top left",
            )
        else:
            fig.add_vline(
                x=fault.injected_at_s,
                line_color=FAULT_COLOR,
                line_width=2,
                annotation_text=label,
                annotation_position="top left",
            )
        failover = fault.failover
        if failover is not None and failover.started_at_s is not None:
            end = (
                failover.finished_at_s if failover.finished_at_s is not None else fault.window_s[-1]
            )
            fig.add_vrect(
                x0=failover.started_at_s,
                x1=end,
                fillcolor=FAILOVER_COLOR,
                opacity=0.15,
                line_width=0,
                annotation_text="failover",
                annotation_position="bottom left",
            )
        if fault.recovered_at_s is not None:
            fig.add_vline(
                x=fault.recovered_at_s,
                line_color=RECOVERED_COLOR,
                line_dash="dot",
                annotation_text=f"RTO {fault.rto_s:.2f}s" if fault.rto_s is not None else "",
                annotation_position="top right",
            )
    return fig


def _run_figures(report: Report) -> list[Any]:
    points = report.timeline
    if not points:
        return []
    # A point is one second, [t, t + 1): lines sit in its middle and bars fill it, so a fault
    # marked at 5.9 s falls in the second that counts its failures.
    t = [p.t + 0.5 for p in points]
    throughput = go.Figure()
    throughput.add_trace(go.Scatter(x=t, y=[p.rps for p in points], name="req/s", mode="lines"))
    throughput.add_trace(
        go.Scatter(
            x=t,
            y=[p.users for p in points],
            name="users",
            mode="lines",
            yaxis="y2",
            line={"dash": "dot"},
        )
    )
    throughput.update_layout(yaxis2={"title": "users", "overlaying": "y", "side": "right"})
    latency = go.Figure()
    for key in ("p50", "p95", "p99"):
        latency.add_trace(
            go.Scatter(x=t, y=[getattr(p, key) for p in points], name=key, mode="lines")
        )
    errors = go.Figure(
        go.Bar(
            x=[p.t for p in points], y=[p.errors for p in points], name="errors", offset=0, width=1
        )
    )
    figures = [
        _layout(throughput, "Throughput over time", "seconds", "requests/s"),
        _layout(latency, "Latency percentiles over time (HDR, per second)", "seconds", "ms"),
        _layout(errors, "Errors over time", "seconds", "failed requests"),
    ]
    generator = report.generator
    if generator is not None and generator.cpu_percent_samples:
        cpu = go.Figure()
        xs: list[float] = list(range(len(generator.cpu_percent_samples)))
        x_title = "sample (s)"
        if generator.first_sample_epoch is not None and report.origin_epoch is not None:
            first = generator.first_sample_epoch - report.origin_epoch
            xs = [round(first + i, 3) for i in range(len(generator.cpu_percent_samples))]
            x_title = "seconds"
        cpu.add_trace(go.Scatter(x=xs, y=generator.cpu_percent_samples, name="generator total"))
        cpu.add_trace(
            go.Scatter(x=xs, y=generator.busiest_process_samples, name="busiest generator process")
        )
        if generator.host_cpu_percent_samples:
            cpu.add_trace(
                go.Scatter(x=xs, y=generator.host_cpu_percent_samples, name="whole machine")
            )
        figures.append(_layout(cpu, "Load generator CPU (100 = one core)", x_title, "% CPU"))
    figures += _telemetry_figures(report)
    return [_mark_faults(fig, report) for fig in figures]


def _keyed_traces(fig: Any, points: list[TelemetryPoint], field: str) -> int:
    """One line per key of a per-name series; how many were drawn."""
    keys = sorted({key for p in points for key in getattr(p, field)})
    for key in keys:
        fig.add_trace(
            go.Scatter(
                x=[p.t for p in points],
                y=[getattr(p, field).get(key) for p in points],
                name=key,
                mode="lines",
            )
        )
    return len(keys)


def _line(fig: Any, points: list[TelemetryPoint], attr: str, name: str, **trace: Any) -> bool:
    values = [getattr(p, attr) for p in points]
    if all(v is None for v in values):
        return False
    fig.add_trace(go.Scatter(x=[p.t for p in points], y=values, name=name, mode="lines", **trace))
    return True


def _telemetry_figures(report: Report) -> list[Any]:
    telemetry = report.telemetry
    if telemetry is None or not telemetry.samples:
        return []
    points = telemetry.samples
    figures = []
    per_replica = go.Figure()
    if _keyed_traces(per_replica, points, "requests_per_replica"):
        figures.append(
            _layout(per_replica, "Requests per replica (server side)", "seconds", "requests/s")
        )
    lag = go.Figure()
    drawn = 0
    for key in sorted({k for p in points for k in p.replication_lag_bytes}):
        drawn += 1
        lag.add_trace(
            go.Scatter(
                x=[p.t for p in points],
                y=[p.replication_lag_bytes.get(key) for p in points],
                name=f"{key} bytes",
                mode="lines",
            )
        )
        lag.add_trace(
            go.Scatter(
                x=[p.t for p in points],
                y=[p.replication_lag_seconds.get(key) for p in points],
                name=f"{key} seconds",
                mode="lines",
                yaxis="y2",
                line={"dash": "dot"},
            )
        )
    if drawn:
        lag.update_layout(yaxis2={"title": "seconds", "overlaying": "y", "side": "right"})
        figures.append(_layout(lag, "Replication lag per standby", "seconds", "bytes"))
    cache = go.Figure()
    if _line(cache, points, "cache_hit_ratio", "cache hit ratio") | _line(
        cache, points, "db_pool_in_use", "db pool in use", yaxis="y2"
    ):
        cache.update_layout(yaxis2={"title": "connections", "overlaying": "y", "side": "right"})
        figures.append(_layout(cache, "Cache hit ratio and database pool", "seconds", "ratio"))
    work = go.Figure()
    drawn_work = [
        _line(work, points, "outbox_backlog", "outbox backlog"),
        _line(work, points, "consumer_lag", "consumer lag"),
        _line(work, points, "worker_processed_per_s", "worker events/s"),
        _line(work, points, "oldest_unpublished_s", "oldest unpublished (s)", yaxis="y2"),
    ]
    if any(drawn_work):
        work.update_layout(yaxis2={"title": "seconds", "overlaying": "y", "side": "right"})
        figures.append(_layout(work, "Outbox and worker", "seconds", "events"))
    cpu = go.Figure()
    if _keyed_traces(cpu, points, "cpu_percent"):
        figures.append(_layout(cpu, "CPU per service (100 = one core)", "seconds", "% CPU"))
    return figures


def _sweep_figures(report: Report) -> list[Any]:
    if report.sweep is None or not report.sweep.steps:
        return []
    steps = report.sweep.steps
    n = [s.replicas for s in steps]
    base = steps[0].rps / steps[0].replicas if steps[0].replicas else 0.0
    throughput = go.Figure()
    throughput.add_trace(go.Scatter(x=n, y=[s.rps for s in steps], name="measured req/s"))
    throughput.add_trace(
        go.Scatter(x=n, y=[base * r for r in n], name="linear", line={"dash": "dot"})
    )
    latency = go.Figure()
    for key in ("p50", "p95", "p99"):
        latency.add_trace(go.Scatter(x=n, y=[getattr(s, key) for s in steps], name=key))
    return [
        _layout(throughput, "Throughput vs replicas", "replicas", "requests/s"),
        _layout(latency, "Latency vs replicas", "replicas", "ms"),
    ]


def render(report: Report) -> str:
    figures = _sweep_figures(report) + _run_figures(report)
    charts = [
        pio.to_html(
            fig,
            full_html=False,
            # The whole plotly.js goes inline once, before the first chart: no CDN, no network.
            include_plotlyjs=index == 0,
            include_mathjax=False,
            config={"displaylogo": False, "responsive": True},
        )
        for index, fig in enumerate(figures)
    ]
    title = "taskscale scaling sweep" if report.kind == "sweep" else "taskscale load test"
    if report.drill is not None:
        title = "taskscale drill" + (f": {report.drill.name}" if report.drill.name else "")
    rpo = rpo_line(report)
    return _jinja.from_string(_TEMPLATE).render(
        title=title,
        status="failed" if report.failed_slos else "passed",
        headline=headline(report),
        drill=drill_line(report),
        rpo=rpo,
        rpo_class="lost"
        if report.rpo is not None and (report.rpo.value or report.rpo.unverified)
        else "ok",
        warnings=warnings(report),
        tables=all_tables(report),
        charts=charts,
        environment=environment_rows(report),
    )
