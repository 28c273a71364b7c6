"""Every step of the generated CI workflow that needs neither a Docker engine nor a cluster runs
here as the runner would run it: `uv sync --locked` from the rendered uv.lock (PyPI or uv's
cache) on each of Python 3.11, 3.12 and 3.13, ruff, mypy, the project's own suite, the built
manifests validated strictly, `docker compose config`. A workflow that cannot pass fails here.
The steps needing an engine are run by tests/docker (the stack) and skipped here.

Each project's suite runs once in taskscale's CI (about 2.5 minutes on 2 cores each): the
``--auth none`` one here, from the lock on the matrix's first version, the default ``jwt`` one
in test_generated_project (pip, the README's other install path); the jwt workflow's pytest
step is the same command, so it is skipped here."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from taskscale.choices import Auth
from tests import workflow
from tests.unit.test_generated_ci import PROVIDED, _tools, classify, render

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("auth", "suite"), [("jwt", False), ("none", True)])
def test_every_step_that_needs_no_engine_passes(tmp_path: Path, auth: Auth, suite: bool) -> None:
    _tools()
    if workflow.uv_binary() is None:
        pytest.fail("uv is missing: it is in taskscale's dev extra")
    project = render(tmp_path, auth=auth)
    flow = workflow.load(project)
    versions = [c["python-version"] for c in workflow.matrix(flow, "test")]
    pythons = workflow.interpreters(versions)
    missing = sorted(set(versions) - set(pythons))
    if missing and os.environ.get("CI"):
        pytest.fail(f"CI must test the generated project on Python {', '.join(missing)}")
    runner = workflow.Runner(project, tmp_path / "runner", pythons)
    ran = []
    for job in flow["jobs"]:
        for combo in workflow.matrix(flow, job):
            if combo.get("python-version") in missing:
                continue  # reported above; not fatal outside CI
            for step in workflow.steps(flow, job, combo):
                kind = classify(job, step)
                if kind == "provided":
                    assert shutil.which(PROVIDED[(job, step.name)]), step
                if kind != "here":
                    continue
                version = combo.get("python-version")
                if step.name == "pytest" and (not suite or version != versions[0]):
                    # The suite runs once per project (see the module docstring); the other
                    # versions install the lock and import-check through every other step.
                    continue
                output = runner.run(step, timeout=1200)
                ran.append((job, step.name, combo.get("python-version")))
                if step.name == "pytest":
                    assert " passed" in output and " failed" not in output, output[-2000:]
    assert {job for job, _, _ in ran} == set(flow["jobs"])
    tested = {version for job, name, version in ran if name == "pytest"}
    assert tested == ({versions[0]} & set(pythons) if suite else set()), ran
    installed = {version for job, name, version in ran if job == "test"}
    assert installed == set(pythons) and installed, ran
