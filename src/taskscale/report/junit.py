"""junit.xml: one testcase per SLO gate, so CI systems show gates as tests."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from taskscale.report.model import Report
from taskscale.report.tables import (
    drill_line,
    environment_rows,
    headline,
    regression_lines,
    rpo_line,
    warnings,
)


def render(report: Report) -> str:
    failures = len(report.failed_slos)
    duration = report.environment.duration_s
    suite = ET.Element(
        "testsuite",
        {
            "name": "taskscale.slo",
            "tests": str(len(report.slo)),
            "failures": str(failures),
            "errors": "0",
            "skipped": "0",
            "time": f"{duration:g}",
            "timestamp": report.environment.started_at,
        },
    )
    properties = ET.SubElement(suite, "properties")
    for key, value in environment_rows(report):
        ET.SubElement(properties, "property", {"name": key, "value": value})
    for result in report.slo:
        case = ET.SubElement(
            suite, "testcase", {"classname": "taskscale.slo", "name": result.expr, "time": "0"}
        )
        measured = "no value" if result.value is None else f"{result.value:g} {result.unit}"
        if not result.passed:
            failure = ET.SubElement(
                case,
                "failure",
                {"message": f"{result.expr} failed: measured {measured}", "type": "SloFailed"},
            )
            failure.text = result.detail or f"threshold {result.threshold:g} {result.unit}"
        else:
            ET.SubElement(case, "system-out").text = f"measured {measured}"
    generator = report.generator
    ET.SubElement(
        properties,
        "property",
        {"name": "generator_saturated", "value": str(bool(generator and generator.saturated))},
    )
    # A drill's measurements: the verdicts are the gates above (rto<..., rpo=0), as for the exit
    # code; each fault and the RPO are properties and lines for whoever reads the suite.
    for fault in report.faults:
        rto = "not recovered" if fault.rto_s is None else f"{fault.rto_s:g}"
        ET.SubElement(properties, "property", {"name": f"rto_s {fault.spec}", "value": rto})
    if report.rpo is not None:
        rpo = report.rpo
        value = f"lost {rpo.lost} changed {rpo.changed} of {rpo.acknowledged_writes}"
        if rpo.unverified:
            value += f" unverified {rpo.unverified}"
        ET.SubElement(properties, "property", {"name": "rpo", "value": value})
    summary = [headline(report)]
    summary += [line for line in (drill_line(report), rpo_line(report)) if line]
    summary += [f"warning: {w}" for w in warnings(report)]
    if report.baseline is not None:
        path = report.baseline.baseline_path
        summary += [f"regression vs {path}: {line}" for line in regression_lines(report)]
    ET.SubElement(suite, "system-out").text = "\n".join(summary)
    suites = ET.Element("testsuites", {"tests": str(len(report.slo)), "failures": str(failures)})
    suites.append(suite)
    ET.indent(suites)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
    )
