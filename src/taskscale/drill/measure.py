"""What each fault did to the clients, derived from the requests (pure: no I/O).

Inputs: the run's per-endpoint bucket counters (``RunMetrics.buckets``: succeeded, failed and
slow requests per ``bucket_ms``, recorded by the Locust plugin in every process, the drill's
writers included), the per-second HDR histograms, and for each fault when it was injected and
what the fault thread saw. An *operation type* is an endpoint with the drill's ``(drill)``
suffix removed (``POST /tasks/`` of the scenario and of the writers are one type).

Definitions (docs/drill.md says the same):

- A bucket is *bad* when any request in it failed or turned slow (slower than ``slow_ms``,
  counted where it became slow: its start + ``slow_ms``).
- *Sustained success* starts at the first bucket ``s`` at or after the injection such that the
  next ``sustain_s`` seconds hold no bad bucket and every operation type that succeeded in the
  10 s before the fault succeeds at least once in them.
- ``rto_s`` = start of ``s`` minus the injection time (0 when clients never saw a failure),
  None when no such stretch begins before the load ends.
- ``detected_at_s``: the first bad bucket after the injection, or the first time the fault
  thread's probe found the service not serving, whichever is first.
- ``recovered_at_s``: once sustained success began, when every operation type had succeeded
  again (the latest of their first successes from ``s`` on).
- The fault's window runs from the injection to ``recovered_at_s`` (to the end of the load when
  it never recovered), at least one bucket: failed and slow requests are counted per operation
  type in it. Its p99 comes from the per-second histograms (whole seconds, by completion time)
  from the injection to the end of the sustained stretch (slow requests complete late), and is
  compared with the p99 of as many seconds before the injection (at least 5, at most 10).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from hdrh.histogram import HdrHistogram

from taskscale.loadgen.channel import DRILL_SUFFIX
from taskscale.loadgen.metrics import FAILED, OK, SLOW, RunMetrics, new_histogram
from taskscale.loadtest.summary import summarize
from taskscale.report.model import FailoverResult, FaultResult

BEFORE_S = 10.0
MIN_BEFORE_S = 5
MAX_BEFORE_S = 10


@dataclass(frozen=True)
class Observed:
    """One injected fault as the fault thread saw it (epoch seconds)."""

    kind: str
    service: str
    spec: str
    injected_at: float
    detail: str | None = None
    resumed_at: float | None = None
    probe_down_at: float | None = None
    probe_back_at: float | None = None
    failover: FailoverResult | None = None  # its times in epoch seconds too
    note: str | None = None


def operation(method: str, name: str) -> str:
    """An endpoint's operation type: ``POST /tasks/`` for the scenario's and the writers'."""
    base = name.removesuffix(DRILL_SUFFIX)
    return base if base.startswith(f"{method} ") else f"{method} {base}"


class Timeline:
    """The run's bucket counters per operation type, with prefix sums for fast window sums."""

    def __init__(self, metrics: RunMetrics) -> None:
        self.width_s = metrics.bucket_ms / 1000.0 if metrics.bucket_ms else 0.1
        cells: dict[str, dict[int, list[int]]] = {}
        for (method, name), recorded in metrics.buckets.items():
            merged = cells.setdefault(operation(method, name), {})
            for index, counters in recorded.items():
                into = merged.setdefault(index, [0, 0, 0])
                for column in (OK, FAILED, SLOW):
                    into[column] += counters[column]
        indices = [i for per_op in cells.values() for i in per_op]
        self.first = min(indices, default=0)
        self.last = max(indices, default=-1)
        self.ops = sorted(cells)
        size = self.last - self.first + 1
        self._ok: dict[str, list[int]] = {}
        self._failed: dict[str, list[int]] = {}
        self._slow: dict[str, list[int]] = {}
        bad = [0] * (size + 1)
        for op, series in cells.items():
            ok, failed, slow = [0] * (size + 1), [0] * (size + 1), [0] * (size + 1)
            for i in range(size):
                cell = series.get(self.first + i)
                ok[i + 1] = ok[i] + (cell[OK] if cell else 0)
                failed[i + 1] = failed[i] + (cell[FAILED] if cell else 0)
                slow[i + 1] = slow[i] + (cell[SLOW] if cell else 0)
            self._ok[op], self._failed[op], self._slow[op] = ok, failed, slow
        # bad[i + 1] - bad[j]: how many bad buckets among i..j (one per bucket).
        for i in range(size):
            is_bad = any(
                self._failed[op][i + 1] > self._failed[op][i]
                or self._slow[op][i + 1] > self._slow[op][i]
                for op in self.ops
            )
            bad[i + 1] = bad[i] + int(is_bad)
        self._bad = bad

    def index(self, epoch: float) -> int:
        return math.floor(epoch / self.width_s + 1e-9)

    def time(self, index: int) -> float:
        return index * self.width_s

    def _span(self, prefix: list[int], start: int, stop: int) -> int:
        """Sum over bucket indices [start, stop) (clipped to the recorded range)."""
        lo = min(max(start - self.first, 0), len(prefix) - 1)
        hi = min(max(stop - self.first, 0), len(prefix) - 1)
        return prefix[hi] - prefix[lo] if hi > lo else 0

    def ok(self, op: str, start: int, stop: int) -> int:
        return self._span(self._ok[op], start, stop)

    def failed(self, op: str, start: int, stop: int) -> int:
        return self._span(self._failed[op], start, stop)

    def slow(self, op: str, start: int, stop: int) -> int:
        return self._span(self._slow[op], start, stop)

    def bad(self, start: int, stop: int) -> int:
        return self._span(self._bad, start, stop)

    def first_bad(self, start: int, stop: int) -> int | None:
        for i in range(max(start, self.first), min(stop, self.last + 1)):
            if self.bad(i, i + 1):
                return i
        return None

    def first_ok(self, op: str, start: int, stop: int) -> int | None:
        for i in range(max(start, self.first), min(stop, self.last + 1)):
            if self.ok(op, i, i + 1):
                return i
        return None


def measure(
    observed: Iterable[Observed],
    metrics: RunMetrics,
    *,
    origin: float,
    sustain_s: float,
) -> list[FaultResult]:
    """One ``FaultResult`` per fault, times in seconds since ``origin`` (the timeline's t=0)."""
    timeline = Timeline(metrics)
    end = metrics.last_end if metrics.last_end is not None else 0.0
    return [_one(item, timeline, metrics, origin, end, sustain_s) for item in observed]


def _one(
    item: Observed,
    timeline: Timeline,
    metrics: RunMetrics,
    origin: float,
    run_end: float,
    sustain_s: float,
) -> FaultResult:
    def rel(epoch: float | None) -> float | None:
        return None if epoch is None else round(epoch - origin, 3)

    injected = item.injected_at
    i0 = timeline.index(injected)
    stop = timeline.index(run_end) + 1
    span = max(round(sustain_s / timeline.width_s), 1)
    before = timeline.index(injected - BEFORE_S)
    required = [op for op in timeline.ops if timeline.ok(op, before, i0)] or [
        op for op in timeline.ops if timeline.ok(op, timeline.first, stop)
    ]

    sustained: int | None = None
    for s in range(i0, stop - span + 1):
        if timeline.bad(s, s + span):
            continue
        if all(timeline.ok(op, s, s + span) for op in required):
            sustained = s
            break

    first_bad = timeline.first_bad(i0, sustained if sustained is not None else stop)
    detected_at, detected_by = None, None
    if first_bad is not None:
        detected_at, detected_by = max(timeline.time(first_bad), injected), "request"
    if item.probe_down_at is not None and (detected_at is None or item.probe_down_at < detected_at):
        detected_at, detected_by = item.probe_down_at, "probe"

    recovered_at: float | None = None
    rto: float | None = None
    note = item.note
    if sustained is not None:
        firsts = [timeline.first_ok(op, sustained, stop) for op in required]
        recovered = max((f for f in firsts if f is not None), default=sustained)
        recovered_at = max(timeline.time(recovered), injected)
        rto = 0.0 if first_bad is None else max(timeline.time(sustained) - injected, 0.0)
    elif not timeline.ops:
        note = _join(note, "no request was recorded in drill buckets: nothing to measure")
    else:
        note = _join(note, f"no {sustain_s:g} s of sustained success before the load ended")

    window_end = recovered_at if recovered_at is not None else run_end
    w_stop = max(timeline.index(window_end) + 1, i0 + 1)
    failed = {op: n for op in timeline.ops if (n := timeline.failed(op, i0, w_stop))}
    slow = {op: n for op in timeline.ops if (n := timeline.slow(op, i0, w_stop))}
    requests = sum(
        timeline.ok(op, i0, w_stop) + timeline.failed(op, i0, w_stop) for op in timeline.ops
    )
    # Slow requests complete (and enter the per-second histograms) late: the latency window
    # also covers the sustained stretch that proved the recovery.
    latency_end = min(window_end + sustain_s, run_end) if recovered_at is not None else run_end
    p99_before, p99_window = _p99s(metrics, injected, latency_end)
    return FaultResult(
        kind=item.kind,
        service=item.service,
        spec=item.spec,
        detail=item.detail,
        injected_at_s=round(injected - origin, 3),
        resumed_at_s=rel(item.resumed_at),
        detected_at_s=rel(detected_at),
        detected_by=detected_by,
        recovered_at_s=rel(recovered_at),
        rto_s=None if rto is None else round(rto, 3),
        service_back_at_s=rel(item.probe_back_at),
        window_s=[round(injected - origin, 3), round(max(window_end, injected) - origin, 3)],
        requests_in_window=requests,
        failed_requests=failed,
        slow_requests=slow,
        p99_before_ms=p99_before,
        p99_window_ms=p99_window,
        failover=None
        if item.failover is None
        else item.failover.model_copy(
            update={
                "started_at_s": rel(item.failover.started_at_s),
                "finished_at_s": rel(item.failover.finished_at_s),
            }
        ),
        note=note,
    )


def _join(first: str | None, second: str) -> str:
    return second if first is None else f"{first}; {second}"


def _p99s(metrics: RunMetrics, start: float, end: float) -> tuple[float | None, float | None]:
    """p99 (ms) of the whole seconds overlapping [start, end], and of as many seconds before
    ``start`` (5 to 10), from the per-second histograms (by completion second)."""
    first_second = math.floor(start)
    seconds = list(range(first_second, math.floor(max(end, start)) + 1))
    count = min(max(len(seconds), MIN_BEFORE_S), MAX_BEFORE_S)
    before = list(range(first_second - count, first_second))
    return p99_of(metrics, before), p99_of(metrics, seconds)


def p99_of(metrics: RunMetrics, seconds: list[int]) -> float | None:
    """p99 (ms) of the given epoch seconds' histograms merged (None: no request in them)."""
    hist: HdrHistogram | None = None
    for second in seconds:
        series = metrics.seconds.get(second)
        if series is None or series.counts.requests == 0:
            continue
        if hist is None:
            hist = new_histogram(2)
        hist.add(series.hist)
    if hist is None or hist.get_total_count() == 0:
        return None
    return summarize(hist).p99
