"""Load-test reports: one typed model (``model.Report``) rendered as JSON, Markdown, HTML, JUnit."""

from __future__ import annotations

from taskscale.report.io import (
    HISTOGRAMS_FILE,
    REPORT_FILE,
    read_report,
    write_all,
)
from taskscale.report.model import SCHEMA_VERSION, Report

__all__ = [
    "HISTOGRAMS_FILE",
    "REPORT_FILE",
    "SCHEMA_VERSION",
    "Report",
    "read_report",
    "write_all",
]
