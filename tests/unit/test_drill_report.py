"""A drill's verdicts in every report form: the rto and rpo gates (parsed before any load,
judged against the measured faults and RPO), the faults table with the restart policy's
count, the RPO line, and the HTML timeline with the faults marked on it."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from taskscale.errors import UsageError
from taskscale.loadtest import summary
from taskscale.loadtest.service import build_report
from taskscale.loadtest.slo import evaluate, parse_slo, parse_slos
from taskscale.report import html, junit, markdown
from taskscale.report.model import (
    DrillInfo,
    FailoverResult,
    FaultResult,
    Report,
    Rpo,
    Telemetry,
    TelemetryPoint,
    Totals,
)
from taskscale.report.tables import fault_table, rpo_line
from tests.unit.test_report_render import environment, metrics


def _fault(spec: str, service: str, rto: float | None, **extra: object) -> FaultResult:
    kind = spec.split(":", 1)[0]
    return FaultResult(
        kind=kind,
        service=service,
        spec=spec,
        injected_at_s=1.0,
        detected_at_s=1.05,
        detected_by="probe",
        recovered_at_s=None if rto is None else 1.0 + rto,
        rto_s=rto,
        failed_requests={"POST /tasks/": 3},
        **extra,
    )


FAULTS = [
    _fault("kill:app-2@2s", "app-2", 0.4, restarts=1, service_back_at_s=1.6),
    _fault(
        "kill:postgres@3s",
        "postgres",
        4.2,
        restarts=1,
        failover=FailoverResult(
            mode="auto",
            old_primary="postgres",
            new_primary="postgres-2",
            started_at_s=1.1,
            finished_at_s=4.0,
        ),
    ),
]


def test_drill_gates_parse_only_in_a_drill() -> None:
    with pytest.raises(UsageError) as info:
        parse_slos(["rto<5s"])
    assert "drill" in info.value.message and info.value.exit_code == 2
    slos = parse_slos(["rto<5s", "postgres:rto<=4s", "rpo=0"], drill=True)
    assert [(s.metric, s.scope, s.threshold) for s in slos] == [
        ("rto", None, 5.0),
        ("rto", "postgres", 4.0),
        ("rpo", None, 0.0),
    ]


@pytest.mark.parametrize("text", ["rpo<1s", "app-2:rpo=0", "p95=3ms", "rto<5kg", "rto=5s"])
def test_malformed_drill_gates_exit_2(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_slos([text], drill=True)
    assert repr(text) in info.value.message and info.value.exit_code == 2


def test_rto_gate_takes_the_worst_fault_or_the_scoped_one() -> None:
    slos = parse_slos(["rto<5s", "rto<4s", "app-2:rto<1s", "redis:rto<1s"], drill=True)
    results = evaluate(slos, metrics_totals(), {}, faults=FAULTS, rpo=None)
    assert [r.passed for r in results] == [True, False, True, False]
    assert results[1].value == pytest.approx(4.2)
    assert results[3].detail == "no fault on 'redis'"


def test_an_unrecovered_fault_fails_the_rto_gate() -> None:
    faults = [*FAULTS, _fault("stop:redis@4s+2s", "redis", None)]
    result = evaluate(parse_slos(["rto<60s"], drill=True), metrics_totals(), {}, faults=faults)[0]
    assert not result.passed
    assert "not recovered" in (result.detail or "") and "stop:redis@4s+2s" in (result.detail or "")


def test_rpo_gate_counts_lost_and_changed_writes() -> None:
    gate = parse_slos(["rpo=0"], drill=True)
    clean = Rpo(acknowledged_writes=120, lost=0, changed=0)
    lossy = Rpo(acknowledged_writes=120, lost=2, changed=1, ids=[7, 9, 11])
    assert evaluate(gate, metrics_totals(), {}, rpo=clean)[0].passed
    failed = evaluate(gate, metrics_totals(), {}, rpo=lossy)[0]
    assert not failed.passed and failed.value == 3
    unread = Rpo(acknowledged_writes=120, lost=0, changed=0, unverified=4)
    result = evaluate(gate, metrics_totals(), {}, rpo=unread)[0]
    assert not result.passed and "could not be read back" in (result.detail or "")
    assert not evaluate(gate, metrics_totals(), {}, rpo=None)[0].passed


def metrics_totals() -> Totals:
    return summary.totals(metrics())


def drill_report(rpo: Rpo) -> Report:
    report = build_report(
        metrics(),
        parse_slos(["rto<5s", "rpo=0"], drill=True),
        environment(),
        faults=FAULTS,
        rpo=rpo,
    )
    report.origin_epoch = 1_700_000_000.0
    report.drill = DrillInfo(
        name="primary-failover",
        failover="auto",
        bucket_ms=100,
        slow_ms=1000.0,
        sustain_s=2.0,
        writers=2,
        after=["postgres rejoined as a standby of the new primary"],
    )
    report.telemetry = Telemetry(
        interval_s=1.0,
        samples=[
            TelemetryPoint(
                t=float(t),
                requests_per_replica={"app-1": 50.0, "app-2": 0.0 if t == 2 else 48.0},
                replication_lag_bytes={"postgres-2": 100 * t},
                cpu_percent={"postgres": 30.0, "app-1": 60.0},
            )
            for t in range(5)
        ],
    )
    return report


def test_faults_table_and_rpo_line() -> None:
    report = drill_report(Rpo(acknowledged_writes=1234, lost=1, changed=0, ids=[42], source="x"))
    table = fault_table(report)
    assert table is not None
    rows = {row[0]: dict(zip(table.columns, row, strict=True)) for row in table.rows}
    assert rows["kill:app-2@2s"]["RTO s"].startswith("0.4")
    assert rows["kill:app-2@2s"]["restarts"] == "1"
    assert "postgres-2 promoted in 2.9 s" in rows["kill:postgres@3s"]["failover"]
    assert rpo_line(report) == (
        "RPO: 1 of 1,234 acknowledged writes lost, 0 changed (task ids 42); read back from x"
    )


def test_every_form_carries_the_drill_verdicts() -> None:
    report = drill_report(Rpo(acknowledged_writes=10, lost=0, changed=0))
    md = markdown.render(report)
    assert "kill:postgres@3s" in md and "RPO: 0 of 10 acknowledged writes lost" in md
    assert "| rto<5s |" in md and "| rpo=0 |" in md
    suite = ET.fromstring(junit.render(report)).find("testsuite")
    assert suite is not None
    names = [c.get("name") for c in suite.findall("testcase")]
    assert "rto<5s" in names and "rpo=0" in names
    page = html.render(report)
    assert "kill:app-2@2s" in page and "kill:postgres@3s" in page
    assert "RPO: 0 of 10 acknowledged writes lost" in page
    # Every time chart (throughput, latency, telemetry) marks each fault and its recovery.
    assert page.count("kill app-2") >= 3
    assert page.count("RTO 0.40s") == page.count("kill app-2")


def test_a_plain_load_report_has_no_drill_sections() -> None:
    report = build_report(metrics(), [parse_slo("p95<200ms")], environment())
    assert fault_table(report) is None and rpo_line(report) is None
    assert "RPO" not in markdown.render(report)


def test_restart_counts_survive_a_record_replaced_by_a_failover() -> None:
    from taskscale.drill.service import _count_restarts

    faults = [
        _fault("kill:app-2@2s", "app-2", 0.4),
        _fault("kill:postgres@3s", "postgres", 4.2),
        _fault("stop:redis@4s+1s", "redis", 0.0),
        _fault("kill:app@2s", "app", 1.0),  # a target that keeps no count
    ]
    before = {"app-2": 3, "postgres": 0, "redis": 1}
    after = {"app-2": 4, "postgres": 0, "redis": 1}  # postgres rejoined as a new record
    _count_restarts(faults, before, after, {"postgres": 1, "app-2": 4})
    assert [f.restarts for f in faults] == [1, 1, 0, None]
