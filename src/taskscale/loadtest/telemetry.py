"""Server-side telemetry in every load report: the target's ``TelemetrySource`` read once a
second on a thread of its own while the load runs, then turned into the report's series.

The source returns raw readings (cumulative counters, gauges); rates come from consecutive
samples here: requests per second per replica (a counter that went down is a restarted
replica: its new value is the delta), the cache hit ratio of the interval across replicas,
events the worker processed per second. Gauges are reported as read: connections in use in
the database pools (summed over replicas), the outbox backlog (the worker's reading, else the
largest a replica reported: they all count the same table), replication lag per standby, CPU
per service. What could not be read is said once in ``notes`` with how often.

The thread only waits and reads; its cost is measured by ``bench/drill.py`` (the generator's
throughput with and without sampling, alternating) and reported per sample (wall time).
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator

from taskscale.errors import TaskscaleError
from taskscale.report.model import Telemetry, TelemetryPoint
from taskscale.targets.base import Target
from taskscale.targets.capabilities import TelemetrySource
from taskscale.targets.telemetry import ReplicaReading, TelemetrySample

INTERVAL_S = 1.0
JOIN_TIMEOUT_S = 5.0


class TelemetrySampler:
    """Calls ``source.sample()`` every ``interval`` seconds until ``stop``."""

    def __init__(self, source: TelemetrySource, interval: float = INTERVAL_S) -> None:
        self.source = source
        self.interval = interval
        self.samples: list[TelemetrySample] = []
        self.durations: list[float] = []
        self.errors: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="telemetry", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(JOIN_TIMEOUT_S)
        self.source.close()

    def _loop(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.samples.append(self.source.sample())
            except (TaskscaleError, OSError, ValueError) as exc:
                # A source never raises for a service that is down; anything else is said
                # once in the report rather than ending the load test.
                self.errors[f"a reading failed: {exc}"] += 1
            self.durations.append(time.monotonic() - started)
            due += self.interval
            now = time.monotonic()
            if due < now:  # a slow reading: skip the ticks it overran
                due = now + self.interval - (now - due) % self.interval
            self._stop.wait(max(due - now, 0.0))

    def telemetry(self, origin: float, notes: list[str] | None = None) -> Telemetry:
        return build_telemetry(
            self.samples,
            origin=origin,
            interval=self.interval,
            durations=self.durations,
            notes=[
                *(notes or []),
                *self.source.notes(),
                *_counted(self.errors, len(self.durations)),
            ],
        )


@contextlib.contextmanager
def sampling(target: Target | None) -> Iterator[TelemetrySampler | None]:
    """Sample ``target``'s telemetry while the block runs (None: the target has none)."""
    source = target.telemetry() if target is not None else None
    if source is None:
        yield None
        return
    sampler = TelemetrySampler(source)
    sampler.start()
    try:
        yield sampler
    finally:
        sampler.stop()


def _counted(notes: Counter[str], total: int) -> list[str]:
    return [f"{note} ({count} of {total} samples)" for note, count in notes.most_common()]


def _rate(now: float | None, before: float | None, seconds: float) -> float | None:
    if now is None or before is None or seconds <= 0:
        return None
    delta = now - before if now >= before else now  # restarted: the counter began again
    return delta / seconds


def build_telemetry(
    samples: list[TelemetrySample],
    *,
    origin: float,
    interval: float,
    durations: list[float] | None = None,
    notes: list[str] | None = None,
) -> Telemetry:
    """The report's series from raw samples (pure)."""
    points: list[TelemetryPoint] = []
    missing: Counter[str] = Counter()
    previous: TelemetrySample | None = None
    for sample in samples:
        missing.update(sample.notes)
        points.append(_point(sample, previous, origin))
        previous = sample
    all_notes = [*(notes or []), *_counted(missing, len(samples))]
    if samples and all(s.worker is None for s in samples):
        all_notes.append(
            "the worker exports no /metrics here: no consumer lag; the outbox backlog is the "
            "app's reading"
        )
    return Telemetry(
        interval_s=interval,
        samples=points,
        notes=all_notes,
        sample_ms_median=round(statistics.median(durations) * 1000, 1) if durations else None,
    )


def _point(
    sample: TelemetrySample, previous: TelemetrySample | None, origin: float
) -> TelemetryPoint:
    seconds = sample.at - previous.at if previous is not None else 0.0
    before: dict[str, ReplicaReading] = (
        {r.name: r for r in previous.replicas} if previous is not None else {}
    )
    per_replica: dict[str, float] = {}
    hits = lookups = 0.0
    for replica in sample.replicas:
        old = before.get(replica.name)
        if old is None:
            continue
        rate = _rate(replica.requests_total, old.requests_total, seconds)
        if rate is not None:
            per_replica[replica.name] = round(rate, 1)
        hit = _rate(replica.cache_hits_total, old.cache_hits_total, seconds)
        looked = _rate(replica.cache_lookups_total, old.cache_lookups_total, seconds)
        if hit is not None and looked is not None:
            hits += hit
            lookups += looked
    pools = [r.pool_in_use for r in sample.replicas if r.pool_in_use is not None]
    worker = sample.worker
    backlogs = [r.outbox_backlog for r in sample.replicas if r.outbox_backlog is not None]
    backlog = worker.outbox_backlog if worker is not None else None
    if backlog is None and backlogs:
        backlog = max(backlogs)
    processed = None
    if worker is not None and previous is not None and previous.worker is not None:
        processed = _rate(worker.processed_total, previous.worker.processed_total, seconds)
    return TelemetryPoint(
        t=round(sample.at - origin, 3),
        requests_per_replica=per_replica,
        replication_lag_bytes={s.name: s.lag_bytes for s in sample.standbys},
        replication_lag_seconds={s.name: s.lag_seconds for s in sample.standbys},
        cache_hit_ratio=round(hits / lookups, 4) if lookups > 0 else None,
        db_pool_in_use=sum(pools) if pools else None,
        outbox_backlog=backlog,
        oldest_unpublished_s=worker.oldest_unpublished_s if worker is not None else None,
        consumer_lag=worker.consumer_lag if worker is not None else None,
        worker_processed_per_s=None if processed is None else round(processed, 2),
        cpu_percent=dict(sample.cpu_percent),
    )
