"""report.html: one self-contained file (plotly.js inlined once; no network needed to view it).

Charts are Plotly figures; tables and text come from ``tables`` like every other form.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from jinja2 import Environment as Jinja
from jinja2 import select_autoescape

from taskscale.report.model import Report
from taskscale.report.tables import all_tables, environment_rows, headline, warnings

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
</style>
</head>
<body>
<h1>{{ title }} <span class="status {{ status }}">{{ status }}</span></h1>
<p>{{ headline }}</p>
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
    )
    return fig


def _run_figures(report: Report) -> list[Any]:
    points = report.timeline
    if not points:
        return []
    t = [p.t for p in points]
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
    errors = go.Figure(go.Bar(x=t, y=[p.errors for p in points], name="errors"))
    figures = [
        _layout(throughput, "Throughput over time", "seconds", "requests/s"),
        _layout(latency, "Latency percentiles over time (HDR, per second)", "seconds", "ms"),
        _layout(errors, "Errors over time", "seconds", "failed requests"),
    ]
    generator = report.generator
    if generator is not None and generator.cpu_percent_samples:
        cpu = go.Figure()
        xs = list(range(len(generator.cpu_percent_samples)))
        cpu.add_trace(go.Scatter(x=xs, y=generator.cpu_percent_samples, name="generator total"))
        cpu.add_trace(
            go.Scatter(x=xs, y=generator.busiest_process_samples, name="busiest generator process")
        )
        if generator.host_cpu_percent_samples:
            cpu.add_trace(
                go.Scatter(x=xs, y=generator.host_cpu_percent_samples, name="whole machine")
            )
        figures.append(_layout(cpu, "Load generator CPU (100 = one core)", "sample (s)", "% CPU"))
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
    return _jinja.from_string(_TEMPLATE).render(
        title=title,
        status="failed" if report.failed_slos else "passed",
        headline=headline(report),
        warnings=warnings(report),
        tables=all_tables(report),
        charts=charts,
        environment=environment_rows(report),
    )
