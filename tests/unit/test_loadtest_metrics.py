"""HDR recording and merging: exact percentiles, counts, per-second series, CO correction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taskscale.loadgen.metrics import (
    Recorder,
    RunMetrics,
    decode,
    encode,
    new_histogram,
)
from taskscale.loadtest import summary
from taskscale.loadtest.summary import summarize

T0 = 1_700_000_000.0


def _record(
    recorder: Recorder,
    ms: float,
    *,
    at: float,
    name: str = "/a",
    failed: bool = False,
    answered: bool = True,
) -> None:
    recorder.record(
        "GET",
        name,
        ms,
        failed=failed,
        answered=answered,
        start_time=at - ms / 1000,
        end_time=at,
        users=3,
    )


def test_percentiles_are_exact_to_hdr_precision() -> None:
    recorder = Recorder()
    for i in range(1, 1001):  # 1..1000 ms
        _record(recorder, float(i), at=T0 + i / 1000)
    stats = summarize(recorder.total.hist)
    assert stats.p50 == pytest.approx(500, rel=1e-3)
    assert stats.p99 == pytest.approx(990, rel=1e-3)
    assert stats.p999 == pytest.approx(999, rel=1e-3)
    assert stats.max == pytest.approx(1000, rel=1e-3)


def test_merge_of_workers_equals_one_recorder() -> None:
    one, a, b = Recorder(), Recorder(), Recorder()
    for i in range(2000):
        ms = 0.2 + (i * 7 % 300) / 3
        at = T0 + i / 400
        _record(one, ms, at=at, failed=i % 50 == 0)
        _record(a if i % 2 else b, ms, at=at, failed=i % 50 == 0)
    merged = RunMetrics.from_dumps([json.loads(json.dumps(a.dump())), b.dump()])
    single = RunMetrics.from_dumps([one.dump()])
    assert merged.processes == 2
    assert merged.total.counts == single.total.counts
    assert summarize(merged.total.hist) == summarize(single.total.hist)
    assert merged.window_seconds == pytest.approx(single.window_seconds)
    assert sorted(merged.seconds) == sorted(single.seconds)
    for second, series in single.seconds.items():
        assert merged.seconds[second].counts == series.counts


def test_counts_failures_and_unanswered() -> None:
    recorder = Recorder()
    _record(recorder, 1, at=T0)
    _record(recorder, 1, at=T0, failed=True)
    _record(recorder, 1, at=T0 + 1, failed=True, answered=False, name="/b")
    metrics = RunMetrics.from_dumps([recorder.dump()])
    assert (
        metrics.total.counts.requests,
        metrics.total.counts.failures,
        metrics.total.counts.unanswered,
    ) == (3, 2, 1)
    assert metrics.endpoints[("GET", "/b")].counts.unanswered == 1
    points = summary.timeline(metrics)
    assert [(p.t, p.rps, p.errors, p.users) for p in points] == [(0, 2, 1, 3), (1, 1, 1, 3)]


def test_timeline_fills_gaps() -> None:
    recorder = Recorder()
    _record(recorder, 1, at=T0)
    _record(recorder, 1, at=T0 + 3)
    points = summary.timeline(RunMetrics.from_dumps([recorder.dump()]))
    assert [p.rps for p in points] == [1, 0, 0, 1]
    assert points[1].p95 is None


def test_coordinated_omission_correction_adds_missed_samples() -> None:
    plain, corrected = Recorder(), Recorder(expected_interval_us=10_000)  # one send per 10 ms
    for recorder in (plain, corrected):
        for _ in range(99):
            _record(recorder, 1, at=T0)
        _record(recorder, 100, at=T0)  # a 100 ms stall hides 9 sends
    assert plain.total.hist.get_total_count() == 100
    assert corrected.total.hist.get_total_count() == 109
    assert corrected.total.counts.requests == 100  # request counts never include the correction
    assert summarize(corrected.total.hist).p95 > summarize(plain.total.hist).p95


def test_encode_roundtrip_and_save_load(tmp_path: Path) -> None:
    hist = new_histogram()
    for value in (5, 50, 500, 5000):
        hist.record_value(value)
    again = decode(encode(hist))
    assert again.get_total_count() == 4 and again.get_max_value() == hist.get_max_value()
    recorder = Recorder()
    _record(recorder, 12.5, at=T0)
    metrics = RunMetrics.from_dumps([recorder.dump()])
    metrics.save(tmp_path / "h.json")
    loaded = RunMetrics.load(tmp_path / "h.json")
    assert loaded.total.counts == metrics.total.counts
    assert summarize(loaded.total.hist) == summarize(metrics.total.hist)


def test_huge_latency_is_clamped_not_lost() -> None:
    recorder = Recorder()
    _record(recorder, 10_000_000.0, at=T0)  # 10 000 s
    assert recorder.total.hist.get_total_count() == 1


def test_generator_saturation_judgement() -> None:
    from taskscale.loadgen.job import judge_generator

    idle = judge_generator(
        [0, 50, 40, 45, 50, 5], [0, 25, 20, 25, 25, 3], [0, 90, 80, 85, 90, 10], processes=2, cpus=2
    )
    assert not idle.saturated and idle.note is None
    # Two workers both near a full core: the generator is the bottleneck.
    busy = judge_generator(
        [0, 190, 195, 185, 190, 20],
        [0, 96, 98, 93, 95, 10],
        [0, 199, 200, 198, 200, 30],
        processes=2,
        cpus=2,
    )
    assert busy.saturated and busy.note is not None
    assert "bottleneck" in busy.note and "all 2 CPUs" in busy.note
    # One worker pegged while the other idles also counts (a worker is one thread).
    single = judge_generator(
        [0, 100, 100, 100, 100, 5], [0, 95, 96, 97, 95, 5], [0, 120] * 3, processes=4, cpus=4
    )
    assert single.saturated


def test_generator_starved_on_a_busy_machine_counts_as_saturated() -> None:
    from taskscale.loadgen.job import judge_generator

    starved = judge_generator(
        [0, 86, 85, 86, 87, 5], [0, 86, 85, 86, 87, 5], [200] * 6, processes=1, cpus=2
    )
    assert starved.saturated
    waiting = judge_generator(
        [0, 40, 42, 41, 40, 5], [0, 40, 42, 41, 40, 5], [200] * 6, processes=1, cpus=2
    )
    assert not waiting.saturated and waiting.note is not None and "compete" in waiting.note


def test_setup_requests_are_kept_out_of_the_total_and_the_timeline() -> None:
    recorder = Recorder()
    _record(recorder, 50.0, at=T0, name="POST /auth/token (setup)")
    _record(recorder, 80.0, at=T0 + 0.5, name="POST /tasks/ (setup)", failed=True)
    for i in range(10):
        _record(recorder, 2.0, at=T0 + 2 + i / 10)
    assert recorder.total.counts.requests == 10
    assert recorder.total.hist.get_max_value() < 3000  # no setup latency in the total
    assert sum(s.counts.requests for s in recorder.seconds.values()) == 10
    assert recorder.first_start > T0 + 1  # the run's window starts with the measured requests
    setup = recorder.endpoints[("GET", "POST /tasks/ (setup)")]
    assert (setup.counts.requests, setup.counts.failures) == (1, 1)
    merged = RunMetrics.from_dumps([json.loads(json.dumps(recorder.dump()))])
    assert merged.excluded == {("GET", "POST /auth/token (setup)"), ("GET", "POST /tasks/ (setup)")}
    stats = {e.name: e for e in summary.endpoints(merged)}
    assert stats["POST /auth/token (setup)"].excluded and not stats["/a"].excluded
    assert summary.totals(merged).failures == 0
    note = summary.excluded_note(summary.endpoints(merged))
    assert len(note) == 1 and "2 setup request(s) excluded" in note[0]
    assert "GET POST /auth/token (setup) x1" in note[0] and "--include-setup" in note[0]


def test_include_setup_counts_them_like_any_request() -> None:
    recorder = Recorder(include_setup=True)
    _record(recorder, 50.0, at=T0, name="POST /auth/token (setup)")
    _record(recorder, 2.0, at=T0 + 1)
    assert recorder.total.counts.requests == 2
    merged = RunMetrics.from_dumps([recorder.dump()])
    assert merged.excluded == set()
    assert summary.excluded_note(summary.endpoints(merged)) == []
