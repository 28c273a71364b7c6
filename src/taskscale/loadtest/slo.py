"""SLO gates: ``[ENDPOINT:]METRIC OP NUMBER[UNIT]``, parsed before any load, evaluated after.

Metrics: p50 p90 p95 p99 p999 max mean (latency; units us, ms, s; ms when omitted), errors
(failed requests, percent; ``%`` optional) and rps (requests per second; ``/s`` optional).
Drills add rto (recovery time, seconds when no unit; the worst fault's, or one service's with
a scope: ``postgres:rto<5s``) and rpo (acknowledged writes lost or changed: ``rpo=0``).
Operators: ``<`` ``<=`` ``>`` ``>=``, and ``=`` for rpo. An endpoint scope is Locust's request name,
optionally with its method: ``GET /tasks/{id}:p95<50ms``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from taskscale.errors import UsageError
from taskscale.report.model import FaultResult, Rpo, SloResult, Totals

LATENCY_METRICS = ("p50", "p90", "p95", "p99", "p999", "max", "mean")
DRILL_METRICS = ("rto", "rpo")
METRICS = (*LATENCY_METRICS, "errors", "rps", *DRILL_METRICS)
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "=": operator.eq,
    "==": operator.eq,
}
_LATENCY_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_EXPR = re.compile(
    r"^\s*(?:(?P<scope>.+)\s*:\s*)?(?P<metric>[a-z0-9_]+)\s*(?P<op><=|>=|==|<|>|=)\s*"
    r"(?P<number>\d+(?:\.\d+)?|\.\d+)\s*(?P<unit>[a-z%/]*)\s*$"
)
HELP = (
    "expected [ENDPOINT:]METRIC OP NUMBER[UNIT], e.g. p95<200ms, errors<1%, rps>500, "
    "'GET /tasks/{id}:p99<=0.5s', rto<5s, rpo=0; metrics: " + ", ".join(METRICS)
)


@dataclass(frozen=True)
class Slo:
    expr: str
    metric: str
    op: str
    threshold: float  # ms for latency, percent for errors, req/s for rps
    unit: str
    scope: str | None = None

    def check(self, value: float) -> bool:
        return _OPS[self.op](value, self.threshold)


def parse_slo(text: str) -> Slo:
    """Parse one gate or raise ``UsageError`` naming it."""
    # The scope is greedy: it ends at the last colon, so endpoint names may contain colons.
    match = _EXPR.match(text)
    if match is None:
        raise UsageError(f"invalid --slo {text!r}: {HELP}")
    metric, op, unit = match["metric"], match["op"], match["unit"]
    number = float(match["number"])
    scope = match["scope"].strip() if match["scope"] else None
    if metric not in METRICS:
        raise UsageError(f"invalid --slo {text!r}: unknown metric {metric!r} ({HELP})")
    if op in ("=", "==") and metric != "rpo":
        raise UsageError(
            f"invalid --slo {text!r}: '=' compares counts (rpo=0); use <, <=, > or >= for {metric}"
        )
    if metric in LATENCY_METRICS:
        unit = unit or "ms"
        if unit not in _LATENCY_UNITS:
            raise UsageError(f"invalid --slo {text!r}: latency unit must be us, ms or s")
        return Slo(text, metric, op, number * _LATENCY_UNITS[unit], "ms", scope)
    if metric == "rto":
        unit = unit or "s"
        if unit not in _LATENCY_UNITS:
            raise UsageError(f"invalid --slo {text!r}: a recovery time's unit is us, ms or s")
        return Slo(text, metric, op, number * _LATENCY_UNITS[unit] / 1000.0, "s", scope)
    if metric == "rpo":
        if unit not in ("", "writes"):
            raise UsageError(f"invalid --slo {text!r}: rpo counts lost writes, e.g. rpo=0")
        if scope is not None:
            raise UsageError(f"invalid --slo {text!r}: rpo is the whole drill's (no scope)")
        return Slo(text, metric, op, number, "writes", scope)
    if metric == "errors":
        if unit not in ("", "%"):
            raise UsageError(f"invalid --slo {text!r}: errors are a percentage, e.g. errors<1%")
        if number > 100:
            raise UsageError(f"invalid --slo {text!r}: a percentage is at most 100")
        return Slo(text, metric, op, number, "%", scope)
    if unit not in ("", "/s", "rps"):
        raise UsageError(f"invalid --slo {text!r}: rps takes no unit (or /s), e.g. rps>500")
    return Slo(text, metric, op, number, "req/s", scope)


def parse_slos(texts: Iterable[str], *, drill: bool = False) -> list[Slo]:
    """Every gate parsed; rto and rpo gates only in a drill (they measure its faults)."""
    slos = [parse_slo(text) for text in texts]
    if not drill:
        for slo in slos:
            if slo.metric in DRILL_METRICS:
                raise UsageError(
                    f"invalid --slo {slo.expr!r}: {slo.metric} measures injected faults; "
                    "gate it in `taskscale drill`"
                )
    return slos


def metric_value(slo: Slo, totals: Totals) -> float:
    if slo.metric == "errors":
        return totals.error_rate
    if slo.metric == "rps":
        return totals.rps
    return float(getattr(totals.latency_ms, slo.metric))


def evaluate(
    slos: Iterable[Slo],
    total: Totals,
    endpoints: dict[str, Totals],
    *,
    faults: list[FaultResult] | None = None,
    rpo: Rpo | None = None,
) -> list[SloResult]:
    """Judge each gate against the run's totals or the named endpoint's (rto and rpo against
    the drill's ``faults`` and ``rpo``).

    ``endpoints`` maps ``"METHOD name"`` to its totals; a scope without a method matches the
    name when only one method uses it.
    """
    results = []
    for slo in slos:
        if slo.metric in DRILL_METRICS:
            results.append(_drill_gate(slo, faults or [], rpo))
            continue
        scope_totals: Totals | None = total
        detail = None
        if slo.scope is not None:
            scope_totals, detail = _find_endpoint(slo.scope, endpoints)
        if scope_totals is None or scope_totals.requests == 0:
            results.append(
                SloResult(
                    expr=slo.expr,
                    passed=False,
                    value=None,
                    threshold=slo.threshold,
                    unit=slo.unit,
                    scope=slo.scope or "total",
                    detail=detail or "no requests measured",
                )
            )
            continue
        value = metric_value(slo, scope_totals)
        results.append(
            SloResult(
                expr=slo.expr,
                passed=slo.check(value),
                value=round(value, 3),
                threshold=slo.threshold,
                unit=slo.unit,
                scope=slo.scope or "total",
            )
        )
    return results


def _find_endpoint(scope: str, endpoints: dict[str, Totals]) -> tuple[Totals | None, str | None]:
    if scope in endpoints:
        return endpoints[scope], None
    matches = [label for label in endpoints if label.split(" ", 1)[-1] == scope]
    if len(matches) == 1:
        return endpoints[matches[0]], None
    if len(matches) > 1:
        return None, f"endpoint {scope!r} is ambiguous ({', '.join(matches)}): add the method"
    return None, f"no requests to endpoint {scope!r}"


def _drill_gate(slo: Slo, faults: list[FaultResult], rpo: Rpo | None) -> SloResult:
    value: float | None = None
    detail: str | None = None
    if slo.metric == "rpo":
        if rpo is None:
            detail = "no acknowledged writes were read back"
        elif rpo.unverified:
            value = float(rpo.value)
            detail = f"{rpo.unverified} acknowledged write(s) could not be read back"
        else:
            value = float(rpo.value)
    else:
        chosen = [
            f for f in faults if slo.scope is None or slo.scope in (f.service, f.spec, f.kind)
        ]
        if not chosen:
            detail = f"no fault on {slo.scope!r}" if slo.scope else "no faults were injected"
        elif any(f.rto_s is None for f in chosen):
            open_faults = ", ".join(f.spec for f in chosen if f.rto_s is None)
            detail = f"not recovered before the load ended: {open_faults}"
        else:
            value = max(f.rto_s for f in chosen if f.rto_s is not None)
    passed = value is not None and detail is None and slo.check(value)
    return SloResult(
        expr=slo.expr,
        passed=passed,
        value=None if value is None else round(value, 3),
        threshold=slo.threshold,
        unit=slo.unit,
        scope=slo.scope or "total",
        detail=detail,
    )
