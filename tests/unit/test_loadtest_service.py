"""``run_loadtest`` orchestration without Locust: a sweep scales the one target it prepared."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from taskscale.config import Project
from taskscale.loadtest import service
from taskscale.loadtest.spec import LoadTestSpec
from taskscale.report.model import Report
from taskscale.targets.base import Target
from taskscale.targets.logstream import LogStream
from taskscale.targets.model import (
    DownResult,
    Endpoints,
    ProcessDetail,
    ServiceStatus,
    StackStatus,
    StepCallback,
    no_steps,
)


class FakeTarget(Target):
    name = "fake"

    def __init__(self) -> None:
        self.replicas = 1
        self.scaled: list[int] = []

    def _status(self) -> StackStatus:
        app = ServiceStatus(
            name="app-1",
            kind="app",
            port=1,
            healthy=True,
            state="running",
            detail=ProcessDetail(pid=1),
        )
        return StackStatus(
            target=self.name,
            project="p",
            replicas=self.replicas,
            services=[app],
            endpoints=self.endpoints(),
        )

    def up(self, replicas: int, on_step: StepCallback = no_steps) -> StackStatus:
        self.scaled.append(replicas)
        self.replicas = replicas
        return self._status()

    def status(self) -> StackStatus:
        return self._status()

    def logs(self, service: str | None, tail: int, follow: bool) -> LogStream:
        return LogStream([], follow=follow, prefix=False)

    def down(self, purge: bool = False, on_step: StepCallback = no_steps) -> DownResult:
        return DownResult(target=self.name, stopped=[], purged=purge)

    def endpoints(self) -> Endpoints:
        return Endpoints(api="http://127.0.0.1:1/")


def test_sweep_scales_the_prepared_target_and_restores_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    targets: list[FakeTarget] = []

    def get_target(name: str | None, project: Project, *, context: str | None = None) -> Target:
        targets.append(FakeTarget())
        return targets[-1]

    steps: list[tuple[str, int | None]] = []

    def run_once(ctx: Any, run_dir: Path, replicas: int | None, *_: Any, **__: Any) -> Any:
        steps.append((ctx.host, ctx.replicas))
        return cast(Report, None), []

    sentinel = cast(Report, object())
    monkeypatch.setattr(service, "get_target", get_target)
    monkeypatch.setattr(service, "_run_once", run_once)
    monkeypatch.setattr(service, "_wait_ready", lambda host, timeout: {})
    monkeypatch.setattr(service, "_sweep_report", lambda ctx, steps, replicas: sentinel)
    monkeypatch.setattr(service, "write_all", lambda report, run_dir: [])
    project = cast(
        Project,
        SimpleNamespace(
            root=tmp_path, config=SimpleNamespace(stack=SimpleNamespace(ready_timeout=1.0))
        ),
    )
    spec = LoadTestSpec(
        users=1,
        spawn_rate=1.0,
        duration_s=1.0,
        scenario=str(tmp_path / "scenario.py"),
        processes=1,
        sweep=[2, 3],
        out=tmp_path / "run",
    )
    outcome = service.run_loadtest(spec, project)
    assert outcome.report is sentinel
    assert len(targets) == 1  # on Kubernetes each target is an API client: build one
    assert targets[0].scaled == [2, 3, 1]
    assert steps == [("http://127.0.0.1:1", 2), ("http://127.0.0.1:1", 3)]
