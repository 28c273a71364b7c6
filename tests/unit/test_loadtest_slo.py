"""SLO gate syntax (parsed before any load) and evaluation."""

from __future__ import annotations

import pytest

from taskscale.errors import UsageError
from taskscale.loadtest.slo import evaluate, parse_slo
from taskscale.report.model import Latency, Totals


@pytest.mark.parametrize(
    ("text", "metric", "op", "threshold", "scope"),
    [
        ("p95<200ms", "p95", "<", 200.0, None),
        ("p99 <= 0.5s", "p99", "<=", 500.0, None),
        ("p999<800us", "p999", "<", 0.8, None),
        ("max<2s", "max", "<", 2000.0, None),
        ("p50<10", "p50", "<", 10.0, None),  # ms by default
        ("errors<1%", "errors", "<", 1.0, None),
        ("errors<=0.5", "errors", "<=", 0.5, None),
        ("rps>500", "rps", ">", 500.0, None),
        ("rps>=12.5/s", "rps", ">=", 12.5, None),
        ("GET /tasks/{id}:p95<50ms", "p95", "<", 50.0, "GET /tasks/{id}"),
        ("/weird:name:p90<3ms", "p90", "<", 3.0, "/weird:name"),
    ],
)
def test_parse_valid(text: str, metric: str, op: str, threshold: float, scope: str | None) -> None:
    slo = parse_slo(text)
    assert (slo.metric, slo.op, slo.threshold, slo.scope) == (metric, op, threshold, scope)
    assert slo.expr == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "p95",
        "p95<",
        "p95<<3ms",
        "p96<3ms",
        "p95=3ms",
        "p95<3kg",
        "errors<1ms",
        "errors<150%",
        "rps>5ms",
        "latency<3ms",
        "p95<-3ms",
    ],
)
def test_parse_invalid_names_the_expression(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_slo(text)
    assert repr(text) in info.value.message
    assert info.value.exit_code == 2


def _totals(
    requests: int = 1000, failures: int = 5, rps: float = 600.0, p95: float = 150
) -> Totals:
    return Totals(
        requests=requests,
        failures=failures,
        error_rate=failures / requests * 100 if requests else 0.0,
        rps=rps,
        latency_ms=Latency(p50=10, p90=100, p95=p95, p99=300, p999=900, max=1000, mean=20),
    )


def test_evaluate_total_gates() -> None:
    slos = [parse_slo(s) for s in ("p95<200ms", "p99<200ms", "errors<1%", "rps>500", "rps>700")]
    results = evaluate(slos, _totals(), {})
    assert [r.passed for r in results] == [True, False, True, True, False]
    assert results[1].value == 300.0 and results[1].unit == "ms"
    assert results[2].value == 0.5


def test_boundaries_respect_the_operator() -> None:
    total = _totals(p95=200)
    assert not evaluate([parse_slo("p95<200ms")], total, {})[0].passed
    assert evaluate([parse_slo("p95<=200ms")], total, {})[0].passed


def test_evaluate_endpoint_scope() -> None:
    endpoints = {"GET /tasks/{id}": _totals(p95=40), "POST /tasks": _totals(p95=90)}
    results = evaluate(
        [
            parse_slo("GET /tasks/{id}:p95<50ms"),
            parse_slo("/tasks:p95<50ms"),  # by name alone, one method uses it
            parse_slo("GET /nope:p95<50ms"),
        ],
        _totals(),
        endpoints,
    )
    assert results[0].passed and results[0].scope == "GET /tasks/{id}"
    assert not results[1].passed and results[1].value == 90
    assert not results[2].passed and "no requests" in (results[2].detail or "")


def test_no_requests_fails_the_gate() -> None:
    result = evaluate([parse_slo("p95<200ms")], _totals(requests=0, failures=0), {})[0]
    assert not result.passed and result.value is None


def test_endpoint_label_does_not_repeat_the_method() -> None:
    from taskscale.report.model import EndpointStats

    base = _totals().model_dump()
    assert EndpointStats(method="GET", name="GET /tasks/{id}", **base).label == "GET /tasks/{id}"
    assert EndpointStats(method="GET", name="/tasks/{id}", **base).label == "GET /tasks/{id}"
