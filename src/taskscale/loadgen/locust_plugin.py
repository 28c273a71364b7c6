"""Loaded into every Locust process next to the scenario (``locust -f scenario.py,this_file``).

It defines no User: it only hooks Locust's events.

- Workers (and a single local runner) record every request's exact latency into HDR
  histograms (``metrics.Recorder``) and write them to ``$TASKSCALE_LOADTEST_RAW/worker-<pid>.json``
  when the test stops; taskscale merges the files. Files, not Locust messages: a dump survives
  whatever happens to the master, and the merge is the same code the report re-render uses.
- The master (or local runner) writes ``progress.json`` every second for the live status line.
- With ``$TASKSCALE_LOADTEST_STDOUT`` (in-cluster runs, one pod per process) both also go to
  stdout as framed records (``channel.encode_record``) that taskscale reads from the pod logs.
- Requests named ``... (setup)`` (registration, login, test data) are recorded under their own
  names but kept out of the totals and the timeline unless ``$TASKSCALE_LOADTEST_INCLUDE_SETUP``.
- ``$TASKSCALE_RATE`` (requests/s, total) paces every user with ``constant_throughput`` and turns
  on coordinated-omission correction in the histograms (see docs/loadtest.md).
- In a drill (``$TASKSCALE_DRILL_BUCKET_MS``) each request is also counted in 100 ms buckets
  (succeeded, failed, slow) and the drill writers' acknowledged writes (``ledger.LEDGER``) go
  into the dump.

Configuration comes from environment variables because Locust forks its workers from one
command line and offers no other channel into a plugin.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import locust.runners
from locust import constant_throughput, events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from taskscale.loadgen.channel import (
    DRILL_BUCKET_ENV,
    DRILL_SLOW_ENV,
    INCLUDE_SETUP_ENV,
    PROGRESS_ENV,
    RATE_ENV,
    RAW_DIR_ENV,
    STDOUT_ENV,
    STOP_WAIT_ENV,
    WORKERS_ENV,
    encode_record,
)
from taskscale.loadgen.ledger import LEDGER
from taskscale.loadgen.metrics import Recorder

# Workers report to the master every 3 s by default; once a second keeps the live line fresh.
locust.runners.WORKER_REPORT_INTERVAL = 1.0

_recorder: Recorder | None = None
_environment: Environment | None = None
_started_at: float | None = None


def _number(name: str) -> float:
    try:
        return float(os.environ.get(name, "0") or 0)
    except ValueError:
        return 0.0


def _rate() -> float:
    return _number(RATE_ENV)


def _on_init(environment: Environment, **_: Any) -> None:
    global _recorder, _environment
    _environment = environment
    runner = environment.runner
    rate = _rate()
    interval_us = 0
    if rate > 0:
        users = max(int(getattr(environment.parsed_options, "num_users", 1) or 1), 1)
        per_user = rate / users
        interval_us = round(1_000_000 / per_user)
        for user_class in environment.user_classes:
            # A drill's writers keep their own pace (they time the recovery).
            if not getattr(user_class, "taskscale_drill_writer", False):
                user_class.wait_time = constant_throughput(per_user)
    if not isinstance(runner, MasterRunner):
        include_setup = os.environ.get(INCLUDE_SETUP_ENV) == "1"
        _recorder = Recorder(
            expected_interval_us=interval_us,
            include_setup=include_setup,
            bucket_ms=int(_number(DRILL_BUCKET_ENV)),
            slow_ms=_number(DRILL_SLOW_ENV),
        )
    if not isinstance(runner, WorkerRunner) and (
        os.environ.get(PROGRESS_ENV) or os.environ.get(STDOUT_ENV)
    ):
        progress = os.environ.get(PROGRESS_ENV)
        gevent.spawn(_write_progress, Path(progress) if progress else None, environment)


def _on_request(
    request_type: str,
    name: str,
    response_time: float,
    response: Any = None,
    exception: BaseException | None = None,
    start_time: float | None = None,
    **_: Any,
) -> None:
    recorder = _recorder
    if recorder is None:
        return
    end = time.time()
    status = getattr(response, "status_code", 0) or 0
    runner = _environment.runner if _environment is not None else None
    recorder.record(
        request_type,
        name,
        response_time or 0.0,
        failed=exception is not None,
        answered=bool(status),
        start_time=start_time if start_time is not None else end - (response_time or 0) / 1000,
        end_time=end,
        users=runner.user_count if runner is not None else 0,
    )


def _on_test_start(**_: Any) -> None:
    global _started_at
    _started_at = time.time()


def _print_record(kind: str, data: dict[str, Any]) -> None:
    # In a pod, stdout is the log taskscale reads back; one write keeps the chunks together.
    sys.stdout.write("".join(line + "\n" for line in encode_record(kind, data)))
    sys.stdout.flush()


def _dump(final: bool) -> None:
    recorder = _recorder
    if recorder is None:
        return
    data = {**recorder.dump(), "final": final}
    if LEDGER:
        data["writes"] = LEDGER.dump()
    if os.environ.get(STDOUT_ENV):
        _print_record("dump", data)
    raw = os.environ.get(RAW_DIR_ENV)
    if not raw:
        return
    directory = Path(raw)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"worker-{os.getpid()}.json"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    tmp.replace(target)


def _on_test_stopping(**_: Any) -> None:
    # A first dump as soon as stopping begins: if this worker is killed while its users finish
    # their last requests, the run still has everything recorded up to here.
    _dump(final=False)


def _on_test_stop(**_: Any) -> None:
    _dump(final=True)


def _on_quitting(environment: Environment, **_: Any) -> None:
    if not isinstance(environment.runner, MasterRunner):
        _dump(final=True)
        return
    # The master exits (and Locust kills its forked workers 3 s later) right after this event:
    # wait here until every worker has written its final dump, within the stop timeout.
    raw = os.environ.get(RAW_DIR_ENV)
    expected = int(os.environ.get(WORKERS_ENV, "0") or 0)
    deadline = time.monotonic() + float(os.environ.get(STOP_WAIT_ENV, "15") or 15)
    while raw and expected and time.monotonic() < deadline:
        if _final_dumps(Path(raw)) >= expected:
            return
        gevent.sleep(0.1)


def _final_dumps(directory: Path) -> int:
    count = 0
    for path in directory.glob("worker-*.json"):
        try:
            if json.loads(path.read_text(encoding="utf-8")).get("final"):
                count += 1
        except (OSError, ValueError):
            continue
    return count


def _listen(hook: Any, handler: Callable[..., None]) -> None:
    hook.add_listener(handler)


_listen(events.init, _on_init)
_listen(events.request, _on_request)
_listen(events.test_start, _on_test_start)
_listen(events.test_stopping, _on_test_stopping)
_listen(events.test_stop, _on_test_stop)
_listen(events.quitting, _on_quitting)


def _write_progress(path: Path | None, environment: Environment) -> None:
    while True:
        runner = environment.runner
        stats = environment.stats.total
        if runner is not None:
            data = {
                "time": time.time(),
                "started_at": _started_at,
                "state": str(runner.state),
                "users": runner.user_count,
                "rps": round(stats.current_rps, 1),
                "p95_ms": stats.get_current_response_time_percentile(0.95),
                "requests": stats.num_requests,
                "failures": stats.num_failures,
            }
            if path is None:
                _print_record("progress", data)
            else:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(data), encoding="utf-8")
                tmp.replace(path)
        gevent.sleep(1.0)
