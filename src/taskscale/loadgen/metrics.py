"""Exact latencies in HDR histograms: recorded per request, merged across processes.

Locust rounds response times into buckets before it computes percentiles; here every request's
latency goes into an HDR histogram (microseconds, 3 significant digits for totals and
endpoints, 2 for the per-second timeline) so the report's percentiles are exact to 0.1 %.

Each Locust worker owns one ``Recorder``; at the end it writes ``Recorder.dump()`` as JSON into
the run's ``raw/`` directory. In a drill the recorder also counts, per endpoint, successes,
failures and slow requests in short buckets (``bucket_ms``, 100 ms): the per-second histograms
are too coarse to time a recovery, and a counter per bucket costs one dict lookup.
``RunMetrics`` merges those dumps (histograms add exactly) and is itself stored as
``histograms.json`` so a report can be re-rendered later. Percentiles are taken in
``summary.py``: this module is shipped into Locust pods and imports no pydantic.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from taskscale.loadgen.channel import is_setup
from taskscale.loadgen.ledger import Ledger

LOWEST_US = 1
HIGHEST_US = 300_000_000  # 5 minutes: longer responses are clamped (and counted as that)
TOTAL_DIGITS = 3
SECOND_DIGITS = 2
FORMAT_VERSION = 1
# A drill bucket's counters: [succeeded, failed, slow].
OK, FAILED, SLOW = 0, 1, 2
Cells = dict[int, list[int]]


def new_histogram(digits: int = TOTAL_DIGITS) -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, digits)


def encode(hist: HdrHistogram) -> str:
    data = hist.encode()
    return data.decode("ascii") if isinstance(data, bytes) else str(data)


def decode(text: str) -> HdrHistogram:
    return HdrHistogram.decode(text.encode("ascii"))


def to_us(milliseconds: float) -> int:
    """A Locust response time (ms, float) as whole microseconds within the histogram's range."""
    return min(max(round(milliseconds * 1000.0), LOWEST_US), HIGHEST_US)


@dataclass
class Counts:
    """Request counters next to a histogram (the histogram's count differs under CO correction)."""

    requests: int = 0
    failures: int = 0
    # Failures with no HTTP response (connection refused/reset, timeout): the server may not
    # have seen these, so they are kept apart for count reconciliation.
    unanswered: int = 0

    def add(self, other: Counts) -> None:
        self.requests += other.requests
        self.failures += other.failures
        self.unanswered += other.unanswered

    def to_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "failures": self.failures, "unanswered": self.unanswered}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Counts:
        return cls(int(data["requests"]), int(data["failures"]), int(data["unanswered"]))


@dataclass
class Series:
    """One histogram plus its counters."""

    counts: Counts = field(default_factory=Counts)
    hist: HdrHistogram = field(default_factory=new_histogram)
    users: int = 0  # per-second series only: users running when the second ended

    def add(self, other: Series) -> None:
        self.counts.add(other.counts)
        self.hist.add(other.hist)
        self.users += other.users

    def to_dict(self) -> dict[str, Any]:
        return {**self.counts.to_dict(), "users": self.users, "hdr": encode(self.hist)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Series:
        return cls(Counts.from_dict(data), decode(str(data["hdr"])), int(data.get("users", 0)))


class Recorder:
    """Records every request of one process (a Locust worker); cheap enough for the hot path.

    ``expected_interval_us`` > 0 turns on coordinated-omission correction (open-model runs):
    a response slower than the pacing interval also records the responses that would have been
    sent meanwhile, like wrk2.

    Setup requests (``channel.is_setup``: registration, login, test data) are recorded in their
    own endpoint series only, left out of the total and the per-second timeline, unless
    ``include_setup``; the endpoints left out are listed in ``excluded``.
    """

    def __init__(
        self,
        expected_interval_us: int = 0,
        *,
        include_setup: bool = False,
        bucket_ms: int = 0,
        slow_ms: float = 0.0,
    ) -> None:
        self.expected_interval_us = expected_interval_us
        self.include_setup = include_setup
        # Drills: per-endpoint event counts in buckets of bucket_ms (0: off); see ``_bucket``.
        self.bucket_ms = bucket_ms
        self.slow_ms = slow_ms
        self.buckets: dict[tuple[str, str], Cells] = {}
        self.total = Series()
        self.endpoints: dict[tuple[str, str], Series] = {}
        self.excluded: set[tuple[str, str]] = set()
        self.seconds: dict[int, Series] = {}
        self.first_start = math.inf
        self.last_end = 0.0

    def record(
        self,
        method: str,
        name: str,
        response_time_ms: float,
        *,
        failed: bool,
        answered: bool,
        start_time: float,
        end_time: float,
        users: int,
    ) -> None:
        value = to_us(response_time_ms)
        second = int(end_time)
        endpoint = self.endpoints.get((method, name))
        if endpoint is None:
            endpoint = self.endpoints[(method, name)] = Series()
            if not self.include_setup and is_setup(name):
                self.excluded.add((method, name))
        if self.excluded and (method, name) in self.excluded:
            _count(endpoint.counts, failed=failed, answered=answered)
            endpoint.hist.record_value(value)
            return
        per_second = self.seconds.get(second)
        if per_second is None:
            per_second = self.seconds[second] = Series(hist=new_histogram(SECOND_DIGITS))
        interval = self.expected_interval_us
        for series in (self.total, endpoint, per_second):
            _count(series.counts, failed=failed, answered=answered)
        if interval > 0:
            for series in (self.total, endpoint, per_second):
                series.hist.record_corrected_value(value, interval)
        else:
            # The hot path: total and endpoint histograms share one layout, so the bucket index
            # is computed once (hdrh's record_value recomputes it per histogram).
            _record_twice(self.total.hist, endpoint.hist, value)
            per_second.hist.record_value(value)
        per_second.users = users
        self.first_start = min(self.first_start, start_time)
        self.last_end = max(self.last_end, end_time)
        if self.bucket_ms:
            self._bucket(method, name, response_time_ms, failed, start_time, end_time)

    def _bucket(
        self, method: str, name: str, ms: float, failed: bool, start: float, end: float
    ) -> None:
        """A success or a failure counts in the bucket it ended in. A slow request (above
        ``slow_ms``) counts as slow in the bucket where it became slow (start + slow_ms: when
        a client could tell), and never as a success."""
        cells = self.buckets.get((method, name))
        if cells is None:
            cells = self.buckets[(method, name)] = {}
        width = self.bucket_ms
        slow = self.slow_ms > 0 and ms > self.slow_ms
        if slow:
            index = int((start * 1000.0 + self.slow_ms) // width)
            cell = cells.get(index) or cells.setdefault(index, [0, 0, 0])
            cell[SLOW] += 1
        if failed or not slow:
            index = int(end * 1000.0 // width)
            cell = cells.get(index) or cells.setdefault(index, [0, 0, 0])
            cell[FAILED if failed else OK] += 1

    def dump(self) -> dict[str, Any]:
        data = {
            "format": FORMAT_VERSION,
            "first_start": self.first_start if self.total.counts.requests else None,
            "last_end": self.last_end if self.total.counts.requests else None,
            "expected_interval_us": self.expected_interval_us,
            "total": self.total.to_dict(),
            **_series_dicts(self.endpoints, self.seconds, self.excluded),
        }
        if self.bucket_ms:
            data["buckets"] = _buckets_dict(self.bucket_ms, self.slow_ms, self.buckets)
        return data


def _count(counts: Counts, *, failed: bool, answered: bool) -> None:
    counts.requests += 1
    if failed:
        counts.failures += 1
        if not answered:
            counts.unanswered += 1


def _series_dicts(
    endpoints: dict[tuple[str, str], Series],
    seconds: dict[int, Series],
    excluded: set[tuple[str, str]],
) -> dict[str, list[dict[str, Any]]]:
    """The per-endpoint and per-second parts of a dump (a worker's and the merged run's)."""
    return {
        "endpoints": [
            {"method": method, "name": name, "excluded": (method, name) in excluded, **s.to_dict()}
            for (method, name), s in sorted(endpoints.items())
        ],
        "seconds": [
            {"second": second, **series.to_dict()} for second, series in sorted(seconds.items())
        ],
    }


def _buckets_dict(
    width: int, slow_ms: float, buckets: dict[tuple[str, str], Cells]
) -> dict[str, Any]:
    return {
        "ms": width,
        "slow_ms": slow_ms,
        "series": [
            {
                "method": method,
                "name": name,
                "cells": [[index, *cell] for index, cell in sorted(cells.items())],
            }
            for (method, name), cells in sorted(buckets.items())
        ],
    }


def _record_twice(first: HdrHistogram, second: HdrHistogram, value: int) -> None:
    """``record_value(value)`` on two histograms of identical layout (values already in range)."""
    index = first._counts_index_for(value)
    for hist in (first, second):
        hist.counts[index] += 1
        hist.total_count += 1
        if value < hist.min_value:
            hist.min_value = value
        if value > hist.max_value:
            hist.max_value = value


@dataclass
class RunMetrics:
    """Everything measured in one run, merged across processes."""

    total: Series = field(default_factory=Series)
    endpoints: dict[tuple[str, str], Series] = field(default_factory=dict)
    seconds: dict[int, Series] = field(default_factory=dict)
    first_start: float | None = None
    last_end: float | None = None
    processes: int = 0
    # Setup endpoints left out of the total and the timeline (see Recorder).
    excluded: set[tuple[str, str]] = field(default_factory=set)
    # Drills: per-endpoint bucket counters (bucket index -> [ok, failed, slow]), the bucket
    # width and the slow threshold, and the writers' acknowledged writes.
    buckets: dict[tuple[str, str], Cells] = field(default_factory=dict)
    bucket_ms: int = 0
    slow_ms: float = 0.0
    writes: Ledger = field(default_factory=Ledger)

    @property
    def window_seconds(self) -> float:
        if self.first_start is None or self.last_end is None:
            return 0.0
        return max(self.last_end - self.first_start, 1e-6)

    def merge_dump(self, data: dict[str, Any]) -> None:
        """Add one process's ``Recorder.dump()`` (or a stored ``RunMetrics.to_dict()``)."""
        if int(data.get("format", 0)) != FORMAT_VERSION:
            raise ValueError(f"unsupported histogram format {data.get('format')!r}")
        self.processes += int(data.get("processes", 1))
        self.total.add(Series.from_dict(data["total"]))
        for item in data["endpoints"]:
            key = (str(item["method"]), str(item["name"]))
            if item.get("excluded"):
                self.excluded.add(key)
            series = Series.from_dict(item)
            if key in self.endpoints:
                self.endpoints[key].add(series)
            else:
                self.endpoints[key] = series
        for item in data["seconds"]:
            second = int(item["second"])
            series = Series.from_dict(item)
            if second in self.seconds:
                self.seconds[second].add(series)
            else:
                self.seconds[second] = series
        if "buckets" in data:
            self._merge_buckets(data["buckets"])
        if "writes" in data:
            self.writes.merge(data["writes"])
        first, last = data.get("first_start"), data.get("last_end")
        if first is not None:
            self.first_start = (
                float(first) if self.first_start is None else min(self.first_start, float(first))
            )
        if last is not None:
            self.last_end = (
                float(last) if self.last_end is None else max(self.last_end, float(last))
            )

    def _merge_buckets(self, data: dict[str, Any]) -> None:
        width = int(data["ms"])
        if self.bucket_ms and width != self.bucket_ms:
            raise ValueError(f"bucket widths differ: {width} and {self.bucket_ms} ms")
        self.bucket_ms = width
        self.slow_ms = float(data.get("slow_ms", 0.0))
        for item in data["series"]:
            cells = self.buckets.setdefault((str(item["method"]), str(item["name"])), {})
            for index, ok, failed, slow in item["cells"]:
                cell = cells.setdefault(int(index), [0, 0, 0])
                cell[OK] += int(ok)
                cell[FAILED] += int(failed)
                cell[SLOW] += int(slow)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "format": FORMAT_VERSION,
            "processes": self.processes,
            "first_start": self.first_start,
            "last_end": self.last_end,
            "total": self.total.to_dict(),
            **_series_dicts(self.endpoints, self.seconds, self.excluded),
        }
        if self.bucket_ms:
            data["buckets"] = _buckets_dict(self.bucket_ms, self.slow_ms, self.buckets)
        if self.writes:
            data["writes"] = self.writes.dump()
        return data

    @classmethod
    def from_dumps(cls, dumps: Iterable[dict[str, Any]]) -> RunMetrics:
        metrics = cls()
        for dump in dumps:
            metrics.merge_dump(dump)
        return metrics

    @classmethod
    def load(cls, path: Path) -> RunMetrics:
        return cls.from_dumps([json.loads(path.read_text(encoding="utf-8"))])

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict()), encoding="utf-8")
