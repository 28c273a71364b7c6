"""Run a generated project's GitHub Actions workflow here, step by step, as a runner would.

Only `run:` steps execute (with bash -eo pipefail, the job's and the step's `env:`, a
`$GITHUB_ENV` file, and `${{ ... }}` expressions expanded from the workflow's `env:` and the
matrix); `uses:` steps (checkout, setup-uv) are what this machine already provides: the project
directory, and uv from taskscale's dev extra. Each step is classified by the test that runs it:
here, provided by the machine, or needing a Docker engine or a cluster (skipped by the fast
tier); a step nobody classified fails the test, so a new CI step is never silently left out.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from taskscale.targets.compose.engine import compose_command

WORKFLOW = Path(".github") / "workflows" / "ci.yml"
_EXPRESSION = re.compile(r"\$\{\{\s*([^}]+?)\s*\}\}")
# Where pyenv keeps interpreters that are not on PATH (this machine has 3.11 to 3.13 there).
PYENV_VERSIONS = Path.home() / ".pyenv" / "versions"


@dataclass(frozen=True)
class Step:
    job: str
    name: str
    run: str | None
    uses: str | None
    env: dict[str, str] = field(default_factory=dict)
    step_id: str | None = None


def load(project: Path) -> dict[str, Any]:
    data = yaml.safe_load((project / WORKFLOW).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    if True in data:  # YAML 1.1 reads the key `on` as a boolean
        data["on"] = data.pop(True)
    return data


def expand(text: str, context: Mapping[str, str]) -> str:
    """``${{ name }}`` replaced from ``context``; an expression it lacks is an error."""

    def value(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in context:
            raise AssertionError(f"no value for ${{{{ {key} }}}} in {sorted(context)}")
        return context[key]

    return _EXPRESSION.sub(value, text)


def matrix(workflow: dict[str, Any], job: str) -> list[dict[str, str]]:
    """Every combination of the job's matrix (one empty one without a matrix)."""
    axes = workflow["jobs"][job].get("strategy", {}).get("matrix", {})
    combos: list[dict[str, str]] = [{}]
    for axis, values in axes.items():
        combos = [{**c, axis: str(v)} for c in combos for v in values]
    return combos


def steps(workflow: dict[str, Any], job: str, combo: Mapping[str, str]) -> list[Step]:
    env = {k: str(v) for k, v in (workflow.get("env") or {}).items()}
    env |= {k: str(v) for k, v in (workflow["jobs"][job].get("env") or {}).items()}
    context = {f"env.{k}": v for k, v in env.items()} | {f"matrix.{k}": v for k, v in combo.items()}
    found = []
    for raw in workflow["jobs"][job]["steps"]:
        run = raw.get("run")
        step_env = {k: expand(str(v), context) for k, v in (raw.get("env") or {}).items()}
        found.append(
            Step(
                job=job,
                name=str(raw.get("name") or raw.get("uses") or run),
                run=expand(run, context) if run is not None else None,
                uses=raw.get("uses"),
                env=env | step_env,
                step_id=raw.get("id"),
            )
        )
    return found


def uv_binary() -> str | None:
    """uv from taskscale's dev extra (its Python package knows where its binary is), else PATH."""
    try:
        import uv
    except ImportError:
        return shutil.which("uv")
    return str(uv.find_uv_bin())


def interpreters(versions: list[str]) -> dict[str, Path]:
    """``X.Y`` -> a Python of that version on this machine (PATH first, then pyenv's)."""
    found: dict[str, Path] = {}
    for version in versions:
        on_path = shutil.which(f"python{version}")
        candidates = [Path(on_path)] if on_path else []
        candidates += sorted(PYENV_VERSIONS.glob(f"{version}.*/bin/python{version}"), reverse=True)
        for candidate in candidates:
            done = subprocess.run(
                [str(candidate), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if done.returncode == 0 and done.stdout.strip() == version:
                found[version] = candidate
                break
    return found


@dataclass
class Runner:
    """Runs steps in ``project`` with a clean environment: this machine's tools, uv from
    taskscale's environment, Compose v2 as the `docker compose` plugin, and the interpreters of
    ``pythons`` first on PATH (so `uv sync --python X.Y` finds them)."""

    project: Path
    workdir: Path
    pythons: dict[str, Path] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        plugins = self.workdir / "docker-config" / "cli-plugins"
        plugins.mkdir(parents=True, exist_ok=True)
        compose = Path(compose_command()[0])
        if compose.name == "docker":  # already the docker CLI plugin
            plugins.rmdir()
        else:
            (plugins / "docker-compose").symlink_to(compose)
        self.github_env = self.workdir / "github-env"
        self.github_env.write_text("")

    def environment(self, step: Step) -> dict[str, str]:
        keep = {
            k: v
            for k, v in os.environ.items()
            if k not in {"VIRTUAL_ENV", "PYTHONPATH", "DATABASE_URL", "REDIS_URL", "CI"}
            and not k.startswith(("TASKSCALE_", "PYTEST_", "UV_"))
        }
        bins = [str(p.parent) for p in self.pythons.values()]
        uv = uv_binary()
        if uv is not None:
            bins.append(str(Path(uv).parent))
        keep["PATH"] = os.pathsep.join([*bins, keep.get("PATH", "")])
        keep["DOCKER_CONFIG"] = str(self.workdir / "docker-config")
        keep["GITHUB_ENV"] = str(self.github_env)
        keep["UV_PYTHON_DOWNLOADS"] = "never"  # use this machine's interpreters, fetch none
        exported = dict(
            line.split("=", 1) for line in self.github_env.read_text().splitlines() if "=" in line
        )
        return keep | step.env | exported

    def run(self, step: Step, timeout: float) -> str:
        assert step.run is not None, step
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step.run],
            cwd=self.project,
            env=self.environment(step),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        output = done.stdout + done.stderr
        self.outputs.append(f"$ {step.job} / {step.name}\n{output}")
        assert done.returncode == 0, f"{step.job} / {step.name} failed:\n{output[-3000:]}"
        return output


def all_steps(workflow: dict[str, Any]) -> Iterator[tuple[str, Step]]:
    """(job, step) of every job and matrix combination."""
    for job in workflow["jobs"]:
        for combo in matrix(workflow, job):
            for step in steps(workflow, job, combo):
                yield job, step
