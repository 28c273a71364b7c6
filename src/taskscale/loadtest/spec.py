"""What a load test should do, validated before anything starts (bad input -> exit 2, no load)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from taskscale.errors import UsageError
from taskscale.loadtest.slo import Slo, parse_slos
from taskscale.targets import target_info

BUILTIN_SCENARIOS = ("read-heavy", "write-heavy", "mixed")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_DURATION_S = 24 * 3600.0


def seconds_of(text: str) -> float | None:
    """``30s``, ``2m``, ``1m30s``, ``1500ms``, ``1h`` or plain seconds -> seconds; None when
    ``text`` is none of these."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return float(value)
    if value and _DURATION_PART.sub("", value) == "":
        return sum(
            float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(value)
        )
    return None


def parse_duration(text: str) -> float:
    """``30s``, ``2m``, ``1m30s``, ``1h``, or plain seconds (``45``) -> seconds (>= 1)."""
    seconds = seconds_of(text)
    if seconds is None:
        raise UsageError(f"invalid duration {text!r}: use e.g. 30s, 2m, 1m30s or 1h")
    if seconds < 1 or seconds > MAX_DURATION_S:
        raise UsageError(f"invalid duration {text!r}: must be between 1s and 24h")
    return seconds


def parse_replica_list(text: str) -> list[int]:
    """``1,2,3`` -> [1, 2, 3]: positive, distinct integers."""
    parts = [part.strip() for part in text.split(",")]
    if not parts or any(not part.isdigit() for part in parts):
        raise UsageError(
            f"invalid --sweep-replicas {text!r}: use comma-separated replica counts, e.g. 1,2,3"
        )
    counts = [int(part) for part in parts]
    if any(count < 1 for count in counts):
        raise UsageError(f"invalid --sweep-replicas {text!r}: replica counts start at 1")
    if len(set(counts)) != len(counts):
        raise UsageError(f"invalid --sweep-replicas {text!r}: a replica count is repeated")
    return counts


@dataclass(frozen=True)
class LoadTestSpec:
    """A validated load test request; build it with ``LoadTestSpec.build``."""

    users: int
    spawn_rate: float
    duration_s: float
    scenario: str  # a built-in name or a path to a locustfile
    processes: int
    slos: list[Slo] = field(default_factory=list)
    rate: float | None = None
    host: str | None = None
    out: Path | None = None
    baseline: Path | None = None
    threshold_pct: float = 5.0
    sweep: list[int] | None = None
    stop_timeout_s: float = 10.0
    target: str = "local"
    context: str | None = None
    include_setup: bool = False  # count "(setup)" requests in the totals and the SLO gates
    telemetry: bool = True  # sample the servers each second (Target.telemetry)

    @classmethod
    def build(
        cls,
        *,
        users: int,
        spawn_rate: float,
        duration: str,
        scenario: str,
        processes: int | None = None,
        slos: list[str] | None = None,
        rate: float | None = None,
        host: str | None = None,
        out: Path | None = None,
        baseline: Path | None = None,
        threshold_pct: float = 5.0,
        sweep: str | None = None,
        target: str = "local",
        context: str | None = None,
        include_setup: bool = False,
        drill: bool = False,
        telemetry: bool = True,
    ) -> LoadTestSpec:
        parsed_slos = parse_slos(slos or [], drill=drill)
        duration_s = parse_duration(duration)
        if users < 1:
            raise UsageError(f"invalid --users {users}: at least 1")
        if spawn_rate <= 0:
            raise UsageError(f"invalid --spawn-rate {spawn_rate}: must be above 0")
        if rate is not None and rate <= 0:
            raise UsageError(f"invalid --rate {rate}: must be above 0 requests/s")
        workers = target_info(target).load_workers
        in_cluster = workers is not None
        if host is not None and in_cluster:
            raise UsageError(
                f"--host loads a URL from this machine; --target {target} runs Locust in the "
                "cluster against the app Service: pass one or the other"
            )
        # Locally: processes on this machine's cores; in a cluster: one worker pod each.
        cpus = os.cpu_count() or 1
        default, most = workers if workers is not None else (cpus, 4 * cpus)
        if processes is None:
            processes = default
        if processes < 1 or processes > most:
            raise UsageError(f"invalid --processes {processes}: between 1 and {most}")
        if host is not None and not re.match(r"^https?://[^/\s]+", host):
            raise UsageError(f"invalid --host {host!r}: use a URL such as http://127.0.0.1:8080")
        if scenario not in BUILTIN_SCENARIOS and not scenario.endswith(".py"):
            raise UsageError(
                f"invalid --scenario {scenario!r}: use {', '.join(BUILTIN_SCENARIOS)} or a .py "
                "locustfile"
            )
        if scenario.endswith(".py") and not Path(scenario).is_file():
            raise UsageError(f"invalid --scenario: {scenario} does not exist")
        if baseline is not None and not baseline.is_file():
            raise UsageError(f"invalid --baseline: {baseline} is not a file")
        if threshold_pct < 0:
            raise UsageError("invalid --threshold: must be 0 or more percent")
        return cls(
            users=users,
            spawn_rate=spawn_rate,
            duration_s=duration_s,
            scenario=scenario,
            processes=processes,
            slos=parsed_slos,
            rate=rate,
            host=host.rstrip("/") if host else None,
            out=out,
            baseline=baseline,
            threshold_pct=threshold_pct,
            sweep=parse_replica_list(sweep) if sweep is not None else None,
            target=target,
            context=context,
            include_setup=include_setup,
            telemetry=telemetry,
        )
