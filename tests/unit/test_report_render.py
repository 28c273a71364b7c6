"""Every report form renders the same typed report: JSON schema, Markdown, HTML, JUnit."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from taskscale.errors import UsageError
from taskscale.loadgen.metrics import Recorder, RunMetrics
from taskscale.loadtest.compare import compare
from taskscale.loadtest.service import build_report, rerender_run, sweep_summary
from taskscale.loadtest.slo import parse_slo
from taskscale.report import HISTOGRAMS_FILE, read_report, write_all
from taskscale.report.model import Environment, GeneratorLoad, Report
from taskscale.report.tables import all_tables, environment_rows, regression_lines

T0 = 1_700_000_000.0


def metrics(slowdown_ms: float = 0.0, requests: int = 600) -> RunMetrics:
    recorder = Recorder()
    for i in range(requests):
        name, method = ("/tasks/{id}", "GET") if i % 3 else ("/tasks", "POST")
        ms = 2.0 + (i % 10) + slowdown_ms
        at = T0 + i / 100
        recorder.record(
            method,
            name,
            ms,
            failed=i % 100 == 0,
            answered=True,
            start_time=at - ms / 1000,
            end_time=at,
            users=10,
        )
    return RunMetrics.from_dumps([recorder.dump()])


def environment() -> Environment:
    return Environment(
        taskscale_version="0.1.0",
        app_version="0.1.0",
        target="local",
        replicas=2,
        cpu_count=2,
        host="http://127.0.0.1:8080",
        scenario="mixed",
        locustfile="loadtest/locustfile.py",
        users=10,
        spawn_rate=10,
        duration_s=6,
        processes=2,
        locust_version="2.47.0",
        python_version="3.11.7",
        platform="Linux",
        started_at="2026-01-01T00:00:00+00:00",
        finished_at="2026-01-01T00:00:07+00:00",
    )


def generator(saturated: bool) -> GeneratorLoad:
    return GeneratorLoad(
        processes=2,
        cpu_count=2,
        cpu_percent_samples=[150, 195, 198],
        busiest_process_samples=[80, 99, 99],
        cpu_percent_peak=198,
        saturated=saturated,
        note="the load generator was the bottleneck" if saturated else None,
    )


def make_report(
    *,
    slos: tuple[str, ...] = ("p95<200ms", "errors<0.5%"),
    saturated: bool = True,
    baseline: Report | None = None,
) -> Report:
    return build_report(
        metrics(),
        [parse_slo(s) for s in slos],
        environment(),
        generator=generator(saturated),
        baseline=baseline,
        baseline_path="base/report.json",
    )


def test_json_schema_fields() -> None:
    data = make_report().to_json_dict()
    assert data["schema_version"] == 1
    total = data["total"]
    assert total["requests"] == 600 and total["failures"] == 6
    assert set(total["latency_ms"]) >= {"p50", "p90", "p95", "p99", "p999", "max"}
    assert total["rps"] == pytest.approx(600 / 5.99, rel=0.02)
    assert {e["name"] for e in data["endpoints"]} == {"/tasks", "/tasks/{id}"}
    assert {"method", "requests", "rps", "latency_ms"} <= set(data["endpoints"][0])
    assert {"t", "rps", "p50", "p95", "p99", "errors", "users"} <= set(data["timeline"][0])
    assert data["slo"][0] == {
        "expr": "p95<200ms",
        "passed": True,
        "value": pytest.approx(11, abs=1),
        "threshold": 200.0,
        "unit": "ms",
        "scope": "total",
        "detail": None,
    }
    assert data["slo"][1]["passed"] is False  # 1 % errors
    env = data["environment"]
    assert {"taskscale_version", "app_version", "target", "replicas", "cpu_count"} <= set(env)
    assert data["generator"]["saturated"] is True


def test_markdown_has_tables_slos_and_saturation() -> None:
    text = (make_report()).model_copy()
    from taskscale.report import markdown

    md = markdown.render(text)
    assert md.startswith("# taskscale Load test: FAILED")
    assert "| endpoint | requests |" in md
    assert re.search(r"^\| TOTAL \| 600 \|", md, re.M)
    assert "| errors<0.5% | 1 % | FAIL |" in md
    assert "GENERATOR SATURATED" in md


def test_html_is_self_contained() -> None:
    from taskscale.report import html

    page = html.render(make_report())
    tags = re.findall(r"<(?:script|link)\b[^>]*>", page, re.I)
    assert tags, "charts need script tags"
    for tag in tags:
        assert not re.search(r"\b(?:src|href)\s*=", tag, re.I), tag
    assert "Plotly.newPlot" in page or "Plotly.react" in page
    assert page.count("<table>") >= 2
    assert "GENERATOR SATURATED" in page
    assert "Throughput over time" in page and "Latency percentiles over time" in page


def test_junit_one_case_per_gate() -> None:
    from taskscale.report import junit

    root = ET.fromstring(junit.render(make_report()))
    suite = root.find("testsuite")
    assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "1"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["p95<200ms", "errors<0.5%"]
    assert cases[0].find("failure") is None and cases[1].find("failure") is not None


def test_baseline_flags_injected_slowdown() -> None:
    base = make_report()
    slow = build_report(
        metrics(slowdown_ms=5), [], environment(), baseline=base, baseline_path="b.json"
    )
    assert slow.baseline is not None
    flagged = {(r.scope, r.metric) for r in slow.baseline.regressions}
    assert ("total", "p50") in flagged and ("total", "p95") in flagged
    assert ("GET /tasks/{id}", "p95") in flagged
    same = compare(base, base, path="b.json", threshold_pct=5)
    assert not same.regressions
    tables = {t.title.split(" (")[0]: t for t in all_tables(slow)}
    assert any(row[-1] == "REGRESSION" for row in tables["Compared with b.json"].rows)


def test_forms_share_environment_rows_and_regression_lines() -> None:
    from taskscale.report import html, junit, markdown

    slow = build_report(
        metrics(slowdown_ms=5), [], environment(), baseline=make_report(), baseline_path="b.json"
    )
    rows = environment_rows(slow)
    assert ["target", "local"] in rows and ["replicas", "2"] in rows
    assert all(key != "rate" for key, _ in rows)  # unset fields are left out
    lines = regression_lines(slow)
    assert lines and any(line.startswith("total p95 ") for line in lines)
    assert regression_lines(make_report()) == []
    md, page = markdown.render(slow), html.render(slow)
    suite = ET.fromstring(junit.render(slow)).find("testsuite")
    assert suite is not None
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    for key, value in rows:
        assert f"| {key} | {value} |" in md
        assert f"<td>{key}</td><td>{value}</td>" in page
        assert properties[key] == value
    summary = suite.findtext("system-out") or ""
    for line in lines:
        assert line in md
        assert f"regression vs b.json: {line}" in summary


def test_rps_drop_is_a_regression_and_small_noise_is_not() -> None:
    base = make_report()
    faster = build_report(
        metrics(slowdown_ms=0.1), [], environment(), baseline=base, baseline_path="b.json"
    )
    assert faster.baseline is not None
    assert not [r for r in faster.baseline.regressions if r.metric in ("p95", "p99")]
    fewer = build_report(metrics(requests=300), [], environment())
    cmp = compare(fewer, base, path="b", threshold_pct=5)
    # Same window length per request, so the rate is equal: no throughput flag.
    assert not [r for r in cmp.rows if r.metric == "rps" and r.regression]


def test_write_read_and_rerender(tmp_path: Path) -> None:
    report = make_report()
    files = write_all(report, tmp_path)
    assert {f.name for f in files} == {"report.json", "report.md", "report.html", "junit.xml"}
    metrics().save(tmp_path / HISTOGRAMS_FILE)
    assert read_report(tmp_path) == report
    (tmp_path / "report.md").unlink()
    again = rerender_run(tmp_path, baseline=tmp_path / "report.json")
    assert (tmp_path / "report.md").is_file()
    assert again.report.total == report.total
    assert again.report.baseline is not None and not again.report.baseline.regressions


def test_read_report_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no report\.json"):
        read_report(tmp_path)
    (tmp_path / "report.json").write_text("{nope")
    with pytest.raises(UsageError, match="cannot read"):
        read_report(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(UsageError, match="schema 99"):
        read_report(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({"schema_version": 1, "total": None}))
    with pytest.raises(UsageError, match="not a valid report"):
        read_report(tmp_path)


def test_sweep_efficiency_and_tables() -> None:
    one = make_report(saturated=False)
    two = build_report(metrics(requests=1100), [], environment(), generator=generator(False))
    sweep = sweep_summary([1, 2], [(one, "replicas-1"), (two, "replicas-2")])
    assert sweep.steps[0].efficiency == 1.0
    assert sweep.steps[1].efficiency == pytest.approx(two.total.rps / (2 * one.total.rps), abs=1e-3)  # type: ignore[union-attr]
    report = Report(kind="sweep", total=None, environment=environment(), sweep=sweep)
    from taskscale.report import html, markdown

    assert "Scaling: throughput and latency vs replicas" in markdown.render(report)
    assert "Throughput vs replicas" in html.render(report)


def test_every_form_says_which_setup_requests_were_excluded() -> None:
    recorder = Recorder()
    for i in range(20):
        at = T0 + i / 10
        name = "POST /auth/token (setup)" if i < 3 else "/tasks/{id}"
        recorder.record(
            "GET", name, 900.0 if i < 3 else 2.0, failed=False, answered=True,
            start_time=at, end_time=at, users=1,
        )  # fmt: skip
    report = build_report(
        RunMetrics.from_dumps([recorder.dump()]), [parse_slo("p99<100ms")], environment()
    )
    assert report.total is not None and report.total.requests == 17
    assert report.slo[0].passed  # the slow logins do not reach the gate
    from taskscale.report import html, junit, markdown

    forms = {
        "markdown": markdown.render(report),
        "html": html.render(report),
        "junit": junit.render(report),
        "json": json.dumps(report.to_json_dict()),
    }
    for form, text in forms.items():
        assert "3 setup request(s) excluded from the totals" in text, form
    excluded = [e for e in report.to_json_dict()["endpoints"] if e["excluded"]]
    assert [e["name"] for e in excluded] == ["POST /auth/token (setup)"]
    assert "[excluded]" in forms["markdown"]


def test_html_charts_count_from_zero() -> None:
    """Counts, durations and percentages: every y axis (the users axis too) starts at zero."""
    from taskscale.report import html

    page = html.render(make_report())
    assert page.count('"rangemode":"tozero"') >= 4  # 3 run charts' y axes + the users axis
