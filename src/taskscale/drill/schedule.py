"""A drill's fault schedule: parsed and checked before any load (bad input -> exit 2).

A fault is ``KIND:SERVICE@T[+DURATION]``: ``kill:app-2@10s`` (SIGKILL, or its equivalent on
the target), ``stop:redis@15s+5s`` (a hang: SIGSTOP, then SIGCONT 5 s later; without
``+DURATION`` the service stays frozen until the load ends). ``T`` counts from the start of the
load. Schedules come from ``--fault`` (repeatable), from a TOML file (``--faults FILE``, one
``[[fault]]`` table each) or from a named drill (``NAMED_DRILLS``).

Services are the names ``taskscale status`` shows (``app-1``, ``postgres``, ``postgres-2``,
``redis``, ``worker``, ``nginx``, ``kafka``) or a role: ``primary`` and ``standby`` (the
current primary and the first standby), ``cache`` (Redis) and ``broker`` (Kafka when the
stack has it, else Redis, which then carries the events).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from taskscale.errors import UsageError
from taskscale.loadtest.spec import seconds_of
from taskscale.targets.capabilities import FAULT_KINDS, FaultKind, FaultTarget

FailoverMode = Literal["auto", "manual", "none"]
FAILOVER_MODES: tuple[FailoverMode, ...] = ("auto", "manual", "none")
ROLES = ("primary", "standby", "cache", "broker")

_SPEC = re.compile(r"^(?P<kind>[^:@+\s]+):(?P<service>[^@\s]+)@(?P<at>[^+\s]+)(?:\+(?P<for>\S+))?$")
_FILE_KEYS = {"kind", "service", "at", "duration"}


@dataclass(frozen=True)
class FaultSpec:
    """One fault as the user wrote it (``service`` may be a role)."""

    kind: FaultKind
    service: str
    at_s: float
    duration_s: float | None = None  # stop only; None: until the load ends

    @property
    def text(self) -> str:
        tail = f"+{_fmt(self.duration_s)}" if self.duration_s is not None else ""
        return f"{self.kind}:{self.service}@{_fmt(self.at_s)}{tail}"


@dataclass(frozen=True)
class PlannedFault:
    """A fault resolved against the running stack, in the order it will be injected."""

    spec: FaultSpec
    target: FaultTarget
    end_s: float  # when a stop is resumed (the load's end without +DURATION); == at for a kill

    @property
    def kind(self) -> FaultKind:
        return self.spec.kind

    @property
    def at_s(self) -> float:
        return self.spec.at_s

    @property
    def label(self) -> str:
        """The fault with its resolved service: ``kill:postgres@10s``."""
        tail = f"+{_fmt(self.end_s - self.at_s)}" if self.kind == "stop" else ""
        return f"{self.kind}:{self.target.name}@{_fmt(self.at_s)}{tail}"


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:g}s"


def _seconds(text: str, what: str, spec: str) -> float:
    value = seconds_of(text)
    if value is None:
        raise UsageError(f"invalid fault {spec!r}: {what} {text!r} is not a time (e.g. 10s, 1m30s)")
    return value


def _kind(text: str, spec: str) -> FaultKind:
    if text not in FAULT_KINDS:
        raise UsageError(
            f"invalid fault {spec!r}: unknown kind {text!r} (choose {' or '.join(FAULT_KINDS)})"
        )
    return text


def _spec(kind_text: str, service: str, at: str, duration: str | None, shown: str) -> FaultSpec:
    kind = _kind(kind_text, shown)
    at_s = _seconds(at, "time", shown)
    duration_s = _seconds(duration, "duration", shown) if duration is not None else None
    if duration_s is not None and kind != "stop":
        raise UsageError(
            f"invalid fault {shown!r}: only a stop lasts (+DURATION); a kill is at once"
        )
    if duration_s is not None and duration_s <= 0:
        raise UsageError(f"invalid fault {shown!r}: the duration must be above 0")
    return FaultSpec(kind, service, at_s, duration_s)


def parse_fault(text: str) -> FaultSpec:
    """``KIND:SERVICE@T[+DURATION]`` -> a ``FaultSpec``, or one UsageError naming the fault."""
    match = _SPEC.match(text.strip())
    if match is None:
        raise UsageError(
            f"invalid fault {text!r}: use KIND:SERVICE@T[+DURATION], e.g. kill:app-2@10s or "
            "stop:redis@15s+5s"
        )
    return _spec(match["kind"], match["service"], match["at"], match["for"], text)


def load_schedule(path: Path) -> list[FaultSpec]:
    """The ``[[fault]]`` tables of a TOML file (kind, service, at, duration)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read --faults {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"invalid --faults {path}: {exc}") from exc
    unknown = sorted(set(data) - {"fault"})
    if unknown:
        raise UsageError(
            f"invalid --faults {path}: unknown key {unknown[0]!r} (use [[fault]] tables)"
        )
    tables = data.get("fault", [])
    if not isinstance(tables, list) or not tables:
        raise UsageError(f"invalid --faults {path}: no [[fault]] table")
    specs = []
    for number, table in enumerate(tables, 1):
        shown = f"{path.name} fault {number}"
        if not isinstance(table, dict):
            raise UsageError(f"invalid fault {shown!r}: use a [[fault]] table")
        extra = sorted(set(table) - _FILE_KEYS)
        missing = sorted({"kind", "service", "at"} - set(table))
        if extra or missing:
            problem = f"unknown key {extra[0]!r}" if extra else f"missing {missing[0]!r}"
            raise UsageError(
                f"invalid fault {shown!r}: {problem} (keys: kind, service, at, duration)"
            )
        values = {key: str(value) for key, value in table.items()}
        specs.append(
            _spec(values["kind"], values["service"], values["at"], values.get("duration"), shown)
        )
    return specs


# ---------------------------------------------------------------- named drills


@dataclass(frozen=True)
class NamedDrill:
    name: str
    what: str
    # The faults for a load of the given duration (seconds).
    faults: Callable[[float], list[FaultSpec]]


def _third(duration: float) -> float:
    """A third of the load, rounded down to a tenth of a second."""
    return int(duration / 3 * 10) / 10


NAMED_DRILLS: dict[str, NamedDrill] = {
    drill.name: drill
    for drill in (
        NamedDrill(
            "replica-crash",
            "kill app-1 a third into the load (the restart policy and nginx's retries keep "
            "serving)",
            lambda d: [FaultSpec("kill", "app-1", _third(d))],
        ),
        NamedDrill(
            "primary-failover",
            "kill the PostgreSQL primary a third into the load; --failover auto promotes a standby",
            lambda d: [FaultSpec("kill", "primary", _third(d))],
        ),
        NamedDrill(
            "cache-outage",
            "freeze Redis (the cache) for the middle third of the load",
            lambda d: [FaultSpec("stop", "cache", _third(d), _third(d))],
        ),
        NamedDrill(
            "broker-outage",
            "freeze the broker (Kafka, or Redis streams) for the middle third of the load",
            lambda d: [FaultSpec("stop", "broker", _third(d), _third(d))],
        ),
        NamedDrill(
            "standby-hang",
            "freeze the first streaming standby for the middle third of the load",
            lambda d: [FaultSpec("stop", "standby", _third(d), _third(d))],
        ),
    )
}


def named_drill(name: str, duration_s: float) -> list[FaultSpec]:
    drill = NAMED_DRILLS.get(name)
    if drill is None:
        raise UsageError(f"unknown drill {name!r}: choose one of {', '.join(NAMED_DRILLS)}")
    return drill.faults(duration_s)


def gather(
    drill: str | None, faults: Sequence[str], faults_file: Path | None, duration_s: float
) -> list[FaultSpec]:
    """Every fault asked for (a named drill, ``--fault``s, a ``--faults`` file), checked
    against the load's duration; at least one."""
    specs = named_drill(drill, duration_s) if drill is not None else []
    specs += [parse_fault(text) for text in faults]
    if faults_file is not None:
        specs += load_schedule(faults_file)
    if not specs:
        raise UsageError(
            "a drill needs faults: name a drill (" + ", ".join(NAMED_DRILLS) + "), or pass "
            "--fault KIND:SERVICE@T[+DURATION] or --faults FILE.toml"
        )
    for spec in specs:
        end = spec.at_s + (spec.duration_s or 0.0)
        if spec.at_s >= duration_s or end > duration_s:
            raise UsageError(
                f"invalid fault {spec.text!r}: it must happen within the load's "
                f"{duration_s:g}s (--duration)"
            )
    return specs


# ---------------------------------------------------------------- resolution


def resolve_service(name: str, targets: Sequence[FaultTarget]) -> FaultTarget:
    """The running service ``name`` (a service name or a role), or one UsageError listing them."""
    by_name = {t.name: t for t in targets}
    if name in by_name:
        return by_name[name]
    found: FaultTarget | None = None
    if name in ("primary", "standby"):
        found = next((t for t in targets if t.role == name), None)
        if found is None and name == "standby":
            raise UsageError(
                "no streaming standby to fault: add one with `taskscale replicate --replicas 1`"
            )
    elif name == "cache":
        found = next((t for t in targets if t.kind == "redis"), None)
    elif name == "broker":
        found = next((t for t in targets if t.kind == "kafka"), None) or next(
            (t for t in targets if t.kind == "redis"), None
        )
    if found is None:
        known = ", ".join([*by_name, *ROLES])
        raise UsageError(f"unknown service {name!r} for a fault: choose one of {known}")
    return found


def plan(
    specs: Sequence[FaultSpec], targets: Sequence[FaultTarget], duration_s: float
) -> list[PlannedFault]:
    """Resolve every fault's service and refuse two faults on one service that overlap."""
    planned = sorted(
        (
            PlannedFault(
                spec,
                resolve_service(spec.service, targets),
                spec.at_s
                if spec.kind == "kill"
                else (spec.at_s + spec.duration_s if spec.duration_s is not None else duration_s),
            )
            for spec in specs
        ),
        key=lambda p: (p.at_s, p.target.name),
    )
    for index, first in enumerate(planned):
        for second in planned[index + 1 :]:
            if first.target.name == second.target.name and second.at_s <= first.end_s:
                raise UsageError(
                    f"faults {first.spec.text!r} and {second.spec.text!r} overlap on "
                    f"{first.target.name}: one fault at a time per service"
                )
    return planned


def failover_mode(
    asked: str | None, planned: Sequence[PlannedFault], *, standbys: int, can_promote: bool
) -> FailoverMode:
    """``--failover``: auto by default when a fault kills the primary, a standby exists and
    the target can promote it, else none; what cannot work is refused before any load (an
    explicit auto on a target without promotion is the caller's ``require``)."""
    mode: FailoverMode = "none"
    if asked is not None:
        if asked not in FAILOVER_MODES:
            raise UsageError(f"invalid --failover {asked!r}: choose {', '.join(FAILOVER_MODES)}")
        mode = asked
    primary_kill = next(
        (p for p in planned if p.kind == "kill" and p.target.role == "primary"), None
    )
    primary_stop = next(
        (p for p in planned if p.kind == "stop" and p.target.role == "primary"), None
    )
    if asked is None and primary_kill is not None and standbys > 0 and can_promote:
        mode = "auto"
    if mode != "auto":
        return mode
    if primary_stop is not None:
        raise UsageError(
            f"--failover auto follows a killed primary; {primary_stop.spec.text!r} freezes it and "
            "it resumes by itself: use --failover none (or manual)"
        )
    if primary_kill is not None and standbys == 0:
        raise UsageError(
            f"--failover auto needs a standby to promote when {primary_kill.spec.text!r} kills the "
            "primary: add one with `taskscale replicate --replicas 1`, or use --failover none"
        )
    return mode
