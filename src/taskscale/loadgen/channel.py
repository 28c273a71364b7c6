"""Environment variables through which taskscale configures its Locust plugin, and the framing
of the records the plugin prints when it runs where taskscale cannot read its files (a pod).

Locust forks its workers from one command line and offers no other way into a plugin. In a
cluster each worker is its own pod: the plugin then prints its histograms and the master its
progress to stdout as ``TASKSCALE-RECORD`` lines, which taskscale reads back from the pods' logs
(stdlib only: the plugin's imports stay light).
"""

from __future__ import annotations

import base64
import json
import uuid
import zlib
from collections.abc import Iterable
from typing import Any

RAW_DIR_ENV = "TASKSCALE_LOADTEST_RAW"  # where each worker writes its histograms
PROGRESS_ENV = "TASKSCALE_LOADTEST_PROGRESS"  # where the master writes the live status
RATE_ENV = "TASKSCALE_RATE"  # total target arrival rate, requests/s ("" = closed model)
WORKERS_ENV = "TASKSCALE_LOADTEST_WORKERS"  # how many final dumps the master waits for
STOP_WAIT_ENV = "TASKSCALE_LOADTEST_STOP_WAIT"  # seconds the master waits for them
STDOUT_ENV = "TASKSCALE_LOADTEST_STDOUT"  # "1": print records to stdout (in-cluster runs)
# "1": count setup requests in the totals, the timeline and the SLO gates (--include-setup).
INCLUDE_SETUP_ENV = "TASKSCALE_LOADTEST_INCLUDE_SETUP"

# Drills (``taskscale drill``): events in buckets of this many milliseconds, a request slower
# than SLOW_MS counts as a failure there, and the drill's writer users (``drill_writer.py``).
DRILL_BUCKET_ENV = "TASKSCALE_DRILL_BUCKET_MS"
DRILL_SLOW_ENV = "TASKSCALE_DRILL_SLOW_MS"
DRILL_WRITERS_ENV = "TASKSCALE_DRILL_WRITERS"  # how many writer users
DRILL_WRITER_RATE_ENV = "TASKSCALE_DRILL_WRITER_RATE"  # write cycles per second, per writer
DRILL_TIMEOUT_ENV = "TASKSCALE_DRILL_TIMEOUT"  # the writers' request timeout, seconds
# The drill's writers name their requests like the scenario's, with this suffix.
DRILL_SUFFIX = " (drill)"

# A request whose Locust name ends with this is setup (registration, login, test data): it is
# reported under its own name but left out of the totals, the timeline and the SLO gates.
SETUP_SUFFIX = "(setup)"


def is_setup(name: str) -> bool:
    return name.rstrip().endswith(SETUP_SUFFIX)


RECORD_PREFIX = "TASKSCALE-RECORD"
# Container runtimes split log lines above 16 KiB; records are cut well below that.
CHUNK_CHARS = 8000


def encode_record(kind: str, data: dict[str, Any]) -> list[str]:
    """``data`` as log lines: ``PREFIX kind id i/n chunk`` (zlib + base64 JSON, cut in chunks)."""
    text = base64.b64encode(zlib.compress(json.dumps(data).encode("utf-8"))).decode("ascii")
    chunks = [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)] or [""]
    record_id = uuid.uuid4().hex[:12]
    n = len(chunks)
    return [f"{RECORD_PREFIX} {kind} {record_id} {i}/{n} {c}" for i, c in enumerate(chunks, 1)]


def decode_records(lines: Iterable[str], kind: str) -> list[dict[str, Any]]:
    """Every complete record of ``kind`` in ``lines``, in order; other lines are skipped."""
    parts: dict[str, dict[int, str]] = {}
    records: list[dict[str, Any]] = []
    for line in lines:
        start = line.find(RECORD_PREFIX + " ")
        if start < 0:
            continue
        fields = line[start:].split(" ", 4)
        if len(fields) != 5 or fields[1] != kind:
            continue
        record_id, position, chunk = fields[2], fields[3], fields[4].strip()
        index, _, total = position.partition("/")
        if not (index.isdigit() and total.isdigit()):
            continue
        got = parts.setdefault(record_id, {})
        got[int(index)] = chunk
        if len(got) == int(total):
            text = "".join(got[i] for i in sorted(got))
            del parts[record_id]
            try:
                data = json.loads(zlib.decompress(base64.b64decode(text)))
            except (ValueError, zlib.error):
                continue
            if isinstance(data, dict):
                records.append(data)
    return records
