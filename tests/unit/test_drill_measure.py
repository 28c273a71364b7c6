"""Fault timing (detection, sustained recovery, RTO, the window's failures and p99) and the RPO
read-back, computed from recorded requests exactly as a drill records them."""

from __future__ import annotations

import pytest

from taskscale.drill.measure import Observed, measure, operation
from taskscale.drill.rpo import verify
from taskscale.errors import TargetError
from taskscale.loadgen.ledger import Ledger, digest
from taskscale.loadgen.metrics import Recorder, RunMetrics
from taskscale.loadtest.slo import evaluate, parse_slo, parse_slos
from taskscale.report.model import FaultResult, Latency, Rpo, Totals
from taskscale.targets.capabilities import TaskRow

T0 = 1_000_000.0
OPS = (("GET", "GET /tasks/{id}"), ("POST", "POST /tasks/"))


def run(
    *,
    failing: tuple[float, float] | None = None,
    slow: tuple[float, float] | None = None,
    silent: tuple[float, float] | None = None,
    until: float = 30.0,
) -> RunMetrics:
    """Two operation types, a request each every 20 ms for ``until`` seconds (10 ms latency):
    requests ending in ``failing`` fail, requests starting in ``slow`` take 3 s, and the POSTs
    stop during ``silent`` (no traffic, no failure)."""
    recorder = Recorder(bucket_ms=100, slow_ms=1000.0)
    step = 0.02
    for i in range(int(until / step)):
        start = T0 + i * step
        for method, name in OPS:
            t = start - T0
            if silent and method == "POST" and silent[0] <= t < silent[1]:
                continue
            latency = 3000.0 if slow and slow[0] <= t < slow[1] else 10.0
            end = start + latency / 1000
            failed = bool(failing and failing[0] <= end - T0 < failing[1])
            recorder.record(
                method,
                name,
                latency,
                failed=failed,
                answered=not failed,
                start_time=start,
                end_time=end,
                users=10,
            )
    return RunMetrics.from_dumps([recorder.dump()])


def one(
    metrics: RunMetrics,
    at: float = 10.0,
    probe_down_at: float | None = None,
    probe_back_at: float | None = None,
) -> FaultResult:
    observed = Observed(
        kind="kill",
        service="postgres",
        spec="kill:postgres@10s",
        injected_at=T0 + at,
        probe_down_at=probe_down_at,
        probe_back_at=probe_back_at,
    )
    return measure([observed], metrics, origin=T0, sustain_s=2.0)[0]


def test_an_outage_is_detected_timed_and_counted() -> None:
    result = one(run(failing=(10.3, 12.0)))
    assert result.injected_at_s == 10.0
    assert result.detected_at_s == pytest.approx(10.3)
    assert result.detected_by == "request"
    # Sustained success starts with the first clean bucket after the last failure.
    assert result.rto_s == pytest.approx(2.0, abs=0.11)
    assert result.recovered_at_s == pytest.approx(12.0, abs=0.11)
    # 1.7 s of failures, both operation types, one request each every 20 ms.
    assert result.failed_requests == {"GET /tasks/{id}": 85, "POST /tasks/": 85}
    assert result.slow_requests == {}
    assert result.p99_before_ms == pytest.approx(10.0, rel=0.02)


def test_no_failure_means_rto_zero() -> None:
    result = one(run())
    assert (result.rto_s, result.detected_at_s, result.detected_by) == (0.0, None, None)
    assert result.failed_requests == {}
    assert result.recovered_at_s == pytest.approx(10.0, abs=0.11)


def test_a_probe_detects_what_no_request_saw() -> None:
    result = one(run(), probe_down_at=T0 + 10.05, probe_back_at=T0 + 10.4)
    assert result.detected_at_s == pytest.approx(10.05)
    assert result.detected_by == "probe"
    assert result.service_back_at_s == pytest.approx(10.4)
    assert result.rto_s == 0.0


def test_slow_requests_count_from_when_they_became_slow() -> None:
    # Requests starting in [10, 11) take 3 s: slow from start + 1 s, so detected at 11.0.
    result = one(run(slow=(10.0, 11.0)))
    assert result.detected_at_s == pytest.approx(11.0, abs=0.01)
    assert sum(result.slow_requests.values()) == 100
    assert result.rto_s is not None and result.rto_s == pytest.approx(2.0, abs=0.11)
    assert result.p99_window_ms is not None and result.p99_window_ms > 2500


def test_recovery_waits_for_every_operation_type() -> None:
    # GETs fail until 11 s; POSTs are silent until 13 s: sustained success needs both.
    metrics = run(failing=(10.0, 11.0), silent=(10.0, 13.0))
    result = one(metrics)
    assert result.detected_at_s == pytest.approx(10.0)
    assert result.recovered_at_s == pytest.approx(13.0, abs=0.11)


def test_never_recovering_is_no_rto_and_a_failed_gate() -> None:
    result = one(run(failing=(10.0, 30.1)))
    assert result.rto_s is None and result.recovered_at_s is None
    assert result.note is not None and "sustained success" in result.note
    assert result.window_s[1] == pytest.approx(30.0, abs=0.05)
    gate = evaluate([parse_slo("rto<5s")], _totals(), {}, faults=[result])[0]
    assert not gate.passed and gate.detail is not None and "not recovered" in gate.detail


def test_the_drill_writers_and_the_scenario_are_one_operation_type() -> None:
    assert operation("POST", "POST /tasks/ (drill)") == "POST /tasks/"
    assert operation("GET", "/tasks/{id}") == "GET /tasks/{id}"


def _totals() -> Totals:
    latency = Latency(p50=1, p90=1, p95=1, p99=1, p999=1, max=1, mean=1)
    return Totals(requests=1, failures=0, error_rate=0, rps=1, latency_ms=latency)


def test_rto_and_rpo_gates() -> None:
    fast = one(run(failing=(10.3, 11.0)))
    slow = one(run(failing=(10.3, 17.0)))
    slow = slow.model_copy(update={"service": "postgres-2", "spec": "kill:postgres-2@10s"})
    results = evaluate(
        parse_slos(["rto<5s", "postgres:rto<5s", "rto<=10000ms", "rpo=0", "rpo<1"], drill=True),
        _totals(),
        {},
        faults=[fast, slow],
        rpo=Rpo(acknowledged_writes=10, lost=1, changed=0),
    )
    verdicts = [(r.expr, r.passed, r.value, r.unit) for r in results]
    assert verdicts == [
        ("rto<5s", False, slow.rto_s, "s"),
        ("postgres:rto<5s", True, fast.rto_s, "s"),
        ("rto<=10000ms", True, slow.rto_s, "s"),
        ("rpo=0", False, 1.0, "writes"),
        ("rpo<1", False, 1.0, "writes"),
    ]
    unverified = evaluate(
        [parse_slo("rpo=0")],
        _totals(),
        {},
        rpo=Rpo(acknowledged_writes=10, lost=0, changed=0, unverified=3),
    )[0]
    assert not unverified.passed and "could not be read back" in (unverified.detail or "")


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (["rto<5s"], "gate it in `taskscale drill`"),
        (["rpo=0"], "gate it in `taskscale drill`"),
    ],
)
def test_drill_gates_outside_a_drill_are_bad_input(texts: list[str], message: str) -> None:
    from taskscale.errors import UsageError

    with pytest.raises(UsageError, match=message):
        parse_slos(texts)


@pytest.mark.parametrize("text", ["rto<5%", "postgres:rpo=0", "rpo<1s", "p99=5ms"])
def test_malformed_drill_gates(text: str) -> None:
    from taskscale.errors import UsageError

    with pytest.raises(UsageError, match="invalid --slo"):
        parse_slos([text], drill=True)


def test_rpo_reads_every_acknowledged_write_back() -> None:
    ledger = Ledger()
    rows: dict[int, TaskRow] = {}
    for task_id in range(1, 8):
        ledger.acked(task_id, digest(f"t{task_id}", "d", "pending"))
        rows[task_id] = (f"t{task_id}", "d", "pending")
    # 2 was updated and acknowledged; the primary has the old content: a lost update.
    ledger.acked(2, digest("t2", "d", "done"))
    # 3's update got no answer: either content is fine.
    ledger.uncertain(3, digest("t3", "d", "done"))
    rows[3] = ("t3", "d", "done")
    del rows[5]  # a lost create
    rpo = verify(ledger, lambda ids: {i: rows[i] for i in ids if i in rows}, source="test")
    assert (rpo.acknowledged_writes, rpo.lost, rpo.changed, rpo.unverified) == (8, 1, 1, 0)
    assert rpo.ids == [2, 5] and rpo.value == 2


def test_rpo_says_what_it_could_not_read() -> None:
    ledger = Ledger()
    ledger.acked(1, digest("a", None, "pending"))

    def broken(ids: list[int]) -> dict[int, TaskRow]:
        raise TargetError("the primary does not answer")

    rpo = verify(ledger, broken, source="test")
    assert (rpo.lost, rpo.changed, rpo.unverified) == (0, 0, 1)
    assert rpo.note is not None and "the primary does not answer" in rpo.note


def test_buckets_and_writes_survive_the_merge_and_the_file(tmp_path: object) -> None:
    first = Recorder(bucket_ms=100, slow_ms=1000.0)
    second = Recorder(bucket_ms=100, slow_ms=1000.0)
    for recorder, failed in ((first, False), (second, True)):
        recorder.record(
            "GET",
            "/x",
            5.0,
            failed=failed,
            answered=True,
            start_time=T0,
            end_time=T0 + 0.005,
            users=1,
        )
    ledger = Ledger()
    ledger.acked(7, "abc")
    merged = RunMetrics.from_dumps([first.dump(), {**second.dump(), "writes": ledger.dump()}])
    index = int(T0 * 10)
    assert merged.buckets[("GET", "/x")] == {index: [1, 1, 0]}
    assert merged.writes.tasks == {7: ["abc"]} and merged.writes.acknowledged == 1
    again = RunMetrics.from_dumps([merged.to_dict()])
    assert again.buckets == merged.buckets and again.writes.tasks == {7: ["abc"]}
    # Setup requests stay out of the buckets like out of the totals.
    setup = Recorder(bucket_ms=100)
    setup.record(
        "POST", "POST /auth/token (setup)", 5.0, failed=True, answered=True,
        start_time=T0, end_time=T0, users=1,
    )  # fmt: skip
    assert setup.buckets == {}
