"""``--target compose``: the generated ``compose.yaml`` (at the project's root) on a Docker engine.

``up`` builds the app image with the engine's classic builder (no BuildKit needed), then runs
``docker compose up --detach --wait --scale app=N``; status and logs come from the Docker SDK.
The stack's choices that outlive one command (how many streaming standbys, sync or async) are
kept in ``.taskscale/compose.json`` so that a later ``up`` keeps them.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskscale import proc
from taskscale.config import Project
from taskscale.errors import (
    CommandFailed,
    ConfigError,
    ServiceNotReady,
    TargetError,
    TaskscaleError,
    UsageError,
)
from taskscale.replication import plan
from taskscale.replication.model import ClusterStatus, ReplicationChange
from taskscale.targets.base import Target, validate_replicas
from taskscale.targets.capabilities import Replication, Standbys
from taskscale.targets.compose import pg
from taskscale.targets.compose.engine import (
    BUILD_TIMEOUT_S,
    Compose,
    build_image,
    compose_command,
    docker_client,
    pull_hint,
)
from taskscale.targets.logstream import LogSource, LogStream, chunked_lines
from taskscale.targets.model import (
    ContainerDetail,
    DownResult,
    Endpoints,
    ServiceKind,
    ServiceStatus,
    StackStatus,
    StepCallback,
    no_steps,
)
from taskscale.targets.ports import check_ports_free

if TYPE_CHECKING:
    from taskscale.targets.compose.faults import ComposeFaults
    from taskscale.targets.compose.telemetry import ComposeTelemetry

COMPOSE_FILE = Path("compose.yaml")
# Where templates before 0.2 put the compose file (Compose then needed --env-file .env).
OLD_COMPOSE_FILE = Path("deploy") / "docker-compose.yml"
DOCKERFILE = "deploy/Dockerfile"
STATE_FILE = "compose.json"
PROFILES_ALL = ("replication", "observability")
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
ONE_SHOT = frozenset({"migrate"})  # exits 0 when done

_KINDS: dict[str, ServiceKind] = {
    "app": "app",
    "nginx": "lb",
    "postgres": "postgres",
    "postgres-standby": "postgres",
    "redis": "redis",
    "worker": "worker",
    "kafka": "kafka",
    "migrate": "job",
}
_PORTS = {"app": 8000, "postgres": 5432, "postgres-standby": 5432, "redis": 6379, "kafka": 9092}
# Start-up order, used to list services the way they depend on each other.
_ORDER = ["postgres", "postgres-standby", "redis", "kafka", "migrate", "app", "worker", "nginx"]


@dataclass
class ComposeState:
    standbys: int = 0
    sync: bool = False


class ComposeTarget(Target):
    name = "compose"
    guide = "docs/compose.md"

    def __init__(self, project: Project) -> None:
        self.project = project
        self.config = project.config
        self.compose_file = project.root / COMPOSE_FILE
        self.state_path = project.state_dir / STATE_FILE
        self._client: Any = None

    # ------------------------------------------------------------------ plumbing

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = docker_client()
        return self._client

    @property
    def image(self) -> str:
        return os.environ.get("TASKSCALE_APP_IMAGE") or self.config.images.app

    def load_state(self) -> ComposeState:
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
            return ComposeState(standbys=int(data["standbys"]), sync=bool(data["sync"]))
        except FileNotFoundError:
            return ComposeState()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{self.state_path} is damaged: {exc}",
                hint="delete it; the next `up` starts without standbys",
            ) from exc

    def save_state(self, state: ComposeState) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state)) + "\n", encoding="utf-8")
        tmp.replace(self.state_path)

    def compose(self, state: ComposeState) -> Compose:
        if not self.compose_file.is_file():
            old = (self.project.root / OLD_COMPOSE_FILE).is_file()
            raise ConfigError(
                f"{self.compose_file} is missing"
                + (f" ({OLD_COMPOSE_FILE} is the file of an older template)" if old else ""),
                hint="`taskscale update` brings compose.yaml in and keeps your edits",
            )
        credentials = self.project.credentials()
        replica_url = ""
        if state.standbys > 0:
            replica_url = credentials.database_url(5432, host="postgres-standby")
        # taskscale.toml's settings, unless the caller's environment overrides them (a mirror,
        # local stand-in images): compose.yaml's own defaults are only what `new` rendered.
        env = {
            "TASKSCALE_API_PORT": str(self.config.ports.api),
            "TASKSCALE_READ_REPLICA_URLS": replica_url,
            "TASKSCALE_APP_IMAGE": self.image,
            "TASKSCALE_POSTGRES_IMAGE": os.environ.get("TASKSCALE_POSTGRES_IMAGE")
            or f"postgres:{self.config.postgres.version}",
        }
        return Compose(self.compose_file, self.project.env_file, self.config.project.name, env)

    @staticmethod
    def profiles(state: ComposeState) -> tuple[str, ...]:
        return ("replication",) if state.standbys > 0 else ()

    def containers(self, service: str | None = None) -> list[Any]:
        filters = [f"{PROJECT_LABEL}={self.config.project.name}"]
        if service is not None:
            filters.append(f"{SERVICE_LABEL}={service}")
        found = self.client.containers.list(all=True, filters={"label": filters})
        return sorted(found, key=_sort_key)

    def _running(self, service: str) -> list[Any]:
        return [c for c in self.containers(service) if c.status == "running"]

    # ------------------------------------------------------------------ up / scale

    def up(self, replicas: int, on_step: StepCallback = no_steps) -> StackStatus:
        validate_replicas(replicas, self.config.stack.max_replicas)
        state = self.load_state()
        compose = self.compose(state)
        compose_command()
        on_step("checking the Docker engine")
        was_running = bool(self._running("nginx"))
        if not was_running:
            check_ports_free({self.config.ports.api: "the API (nginx)"})
        self.build(on_step)
        on_step(f"docker compose up: {replicas} app replicas, waiting until healthy")
        timeout = max(120.0, self.config.stack.ready_timeout * 4)
        args = ["up", "--detach", "--wait", "--wait-timeout", str(int(timeout)), "--no-build"]
        args += ["--scale", f"app={replicas}"]
        if state.standbys:
            args += ["--scale", f"postgres-standby={state.standbys}"]
        try:
            compose.run(*args, timeout=timeout + 60, profiles=self.profiles(state))
        except CommandFailed as exc:
            raise self._not_ready(exc, stop=not was_running, state=state, on_step=on_step) from exc
        if state.standbys:
            on_step("checking the standbys")
            self._converge_replication(state, on_step)
        return self.status()

    def build(self, on_step: StepCallback = no_steps) -> None:
        on_step(f"building {self.image}")
        buildargs = {}
        if base := os.environ.get("TASKSCALE_PYTHON_IMAGE"):
            buildargs["BASE_IMAGE"] = base
        for line in build_image(
            docker_client(timeout=BUILD_TIMEOUT_S),
            context=self.project.root,
            dockerfile=DOCKERFILE,
            tag=self.image,
            buildargs=buildargs,
        ):
            if line.startswith("Step "):
                on_step(f"building {self.image}: {line[:70]}")

    def _not_ready(
        self, exc: CommandFailed, *, stop: bool, state: ComposeState, on_step: StepCallback
    ) -> Exception:
        """The service that kept `up` from finishing, with its log tail; a first `up` that failed
        is taken down again so nothing half-started is left behind."""
        culprit = next((c for c in self.containers() if not _state(c)[1]), None)
        message = str(exc.detail or exc).strip().splitlines()
        first = message[-1] if message else str(exc)
        if culprit is not None:
            log = _decode(culprit.logs(tail=20))
            error: TaskscaleError = ServiceNotReady(
                f"{culprit.name} did not become ready ({first})",
                detail=proc.tail(log) or None,
            )
        else:
            error = TargetError(
                f"docker compose up failed: {first}",
                hint=pull_hint(first),
                detail=exc.detail,
            )
        if stop:
            on_step("stopping what was started")
            with contextlib.suppress(TaskscaleError):
                self.compose(state).run(
                    "down", "--timeout", "10", timeout=120, profiles=PROFILES_ALL, check=False
                )
        return error

    # ------------------------------------------------------------------ status / logs

    def status(self) -> StackStatus:
        containers = self.containers()
        services = [self._service_status(c) for c in containers]
        replicas = sum(
            1 for c in containers if c.labels.get(SERVICE_LABEL) == "app" and c.status == "running"
        )
        notes = [] if containers else ["not running: `taskscale up --target compose` starts it"]
        notes += self.file_notes()
        return StackStatus(
            target=self.name,
            project=self.config.project.name,
            replicas=replicas,
            services=services,
            endpoints=self.endpoints(),
            notes=notes,
        )

    def _service_status(self, container: Any) -> ServiceStatus:
        service = container.labels.get(SERVICE_LABEL, "?")
        info = container.attrs.get("State", {})
        state, healthy = _state(container)
        port = self.config.ports.api if service == "nginx" else _PORTS.get(service)
        log_tail = None
        if not healthy:
            log_tail = proc.tail(_decode(container.logs(tail=10)), 10) or None
        return ServiceStatus(
            name=container.name,
            kind=_KINDS.get(service, "monitoring"),
            port=port,
            healthy=healthy,
            state=state,
            uptime_seconds=_uptime(info) if state == "running" else None,
            log_tail=log_tail,
            detail=ContainerDetail(
                container_id=str(container.id)[:12], pid=info.get("Pid") or None
            ),
        )

    def endpoints(self) -> Endpoints:
        return Endpoints(api=f"http://127.0.0.1:{self.config.ports.api}")

    def file_notes(self) -> list[str]:
        """What the user should know about the project's compose files."""
        if (self.project.root / OLD_COMPOSE_FILE).is_file():
            # `taskscale update` keeps the old file when the user had edited it.
            return [
                f"{OLD_COMPOSE_FILE} is not used any more: compose.yaml at the project root is "
                "(move any edit of yours there, then delete the old file)"
            ]
        return []

    def logs(self, service: str | None, tail: int, follow: bool) -> LogStream:
        containers = self.containers()
        if not containers:
            raise TargetError(
                "the compose stack is not running",
                hint="start it with `taskscale up --target compose` first",
            )
        if service is not None:
            by_service = [c for c in containers if c.labels.get(SERVICE_LABEL) == service]
            chosen = by_service or [c for c in containers if c.name == service]
            if not chosen:
                names = sorted({c.labels.get(SERVICE_LABEL, "?") for c in containers})
                raise UsageError(f"unknown service {service!r}: choose one of {', '.join(names)}")
        else:
            chosen = containers
        sources = [_container_log(c, tail, follow) for c in chosen]
        return LogStream(sources, follow=follow, prefix=len(chosen) > 1)

    # ------------------------------------------------------------------ down

    def down(self, purge: bool = False, on_step: StepCallback = no_steps) -> DownResult:
        before = [c.name for c in self.containers()]
        state = self.load_state()
        on_step("docker compose down" + (" --volumes" if purge else ""))
        args = ["down", "--timeout", "20", "--remove-orphans"]
        if purge:
            args.append("--volumes")
        self.compose(state).run(*args, timeout=240, profiles=PROFILES_ALL)
        left = [c.name for c in self.containers()]
        if left:
            raise TargetError(f"containers still present after down: {', '.join(left)}")
        if purge:
            self.state_path.unlink(missing_ok=True)
        return DownResult(target=self.name, stopped=before, purged=purge)

    # ------------------------------------------------------------------ drills

    def faults(self) -> ComposeFaults:
        from taskscale.targets.compose.faults import ComposeFaults

        return ComposeFaults(self, _KINDS, SERVICE_LABEL)

    def telemetry(self) -> ComposeTelemetry:
        from taskscale.targets.compose.telemetry import ComposeTelemetry

        return ComposeTelemetry(self.project, self.containers, SERVICE_LABEL)

    # ------------------------------------------------------------------ replication

    def replication(self) -> Replication:
        return _ComposeReplication(self)

    def primary(self) -> pg.Primary:
        """psql on the running primary, as the project's database owner."""
        running = self._running("postgres")
        if not running:
            raise TargetError(
                "the compose stack's PostgreSQL is not running",
                hint="start the stack first: taskscale up --target compose",
            )
        credentials = self.project.credentials()
        return pg.Primary(
            running[0], user=credentials.postgres_user, database=credentials.postgres_db
        )

    def replication_status(self) -> ClusterStatus:
        return pg.cluster_status(
            self.name,
            self.primary(),
            self._running("postgres-standby"),
            sync=self.load_state().sync,
        )

    def replicate(
        self, standbys: int | None, sync: bool | None, on_step: StepCallback = no_steps
    ) -> ReplicationChange:
        started = time.monotonic()
        old = self.load_state()
        wanted = ComposeState(
            standbys=max(old.standbys, 1) if standbys is None else standbys,
            sync=old.sync if sync is None else sync,
        )
        plan.check_standby_count(wanted.standbys)
        if wanted.sync and wanted.standbys == 0:
            raise UsageError("--sync needs at least one standby")
        apps = self._running("app")
        if not apps:
            raise TargetError(
                "the compose stack is not running",
                hint="start it first: taskscale up --target compose",
            )
        primary = self.primary()
        changed: list[str] = []
        if old.sync and (not wanted.sync or wanted.standbys < old.standbys):
            # Never leave the primary waiting for a standby that is about to go away.
            on_step("switching commits to asynchronous")
            primary.run(*pg.set_sync(False))
        on_step(f"docker compose up: {wanted.standbys} standbys, app reads re-pointed")
        timeout = max(180.0, self.config.stack.ready_timeout * 6)
        try:
            self.compose(wanted).run(
                "up",
                "--detach",
                "--wait",
                "--wait-timeout",
                str(int(timeout)),
                "--no-build",
                "--scale",
                f"app={len(apps)}",
                "--scale",
                f"postgres-standby={wanted.standbys}",
                timeout=timeout + 60,
                profiles=("replication",),
            )
        except CommandFailed as exc:
            raise self._not_ready(exc, stop=False, state=wanted, on_step=on_step) from exc
        if wanted.standbys != old.standbys:
            changed.append(f"standbys: {old.standbys} -> {wanted.standbys}")
        if wanted.sync != old.sync:
            changed.append("sync" if wanted.sync else "async")
        self.save_state(wanted)
        self._converge_replication(wanted, on_step, primary)
        status = pg.cluster_status(
            self.name, primary, self._running("postgres-standby"), sync=wanted.sync
        )
        return ReplicationChange(
            action="replicate", changed=changed, status=status, seconds=time.monotonic() - started
        )

    def _converge_replication(
        self, state: ComposeState, on_step: StepCallback, primary: pg.Primary | None = None
    ) -> None:
        """Wait until every standby streams, then apply sync and drop slots of removed ones."""
        primary = primary or self.primary()
        timeout = max(60.0, self.config.stack.ready_timeout * 2)
        streaming = 0

        def all_streaming() -> bool:
            nonlocal streaming
            streaming = sum(1 for s in pg.senders(primary) if s.state == "streaming")
            on_step(f"waiting for standbys to stream ({streaming}/{state.standbys})")
            return streaming >= state.standbys

        if not proc.poll_until(all_streaming, timeout, max_interval=0.5):
            raise ServiceNotReady(
                f"{streaming} of {state.standbys} standbys are streaming after {timeout:g}s",
                hint="see `taskscale logs postgres-standby --target compose`",
            )
        primary.run(*pg.set_sync(state.sync and state.standbys > 0), pg.DROP_STALE_SLOTS_SQL)


class _ComposeReplication(Replication, Standbys):
    """Status and standbys (one scaled service); promotion is the local target's alone."""

    def __init__(self, target: ComposeTarget) -> None:
        self._target = target

    def status(self) -> ClusterStatus:
        return self._target.replication_status()

    def standbys(self) -> Standbys:
        return self

    def replicate(
        self, standbys: int | None, sync: bool | None, on_step: StepCallback = no_steps
    ) -> ReplicationChange:
        return self._target.replicate(standbys, sync, on_step)


def _container_log(container: Any, tail: int, follow: bool) -> LogSource:
    """A container's log: its last ``tail`` lines, then (``follow``) a stream that ``close``
    ends (the SDK's stream holds the HTTP response)."""
    streams: list[Any] = []
    lock = threading.Lock()

    def read(stop: threading.Event) -> Iterator[str]:
        if not follow:
            yield from _decode(container.logs(tail=tail)).splitlines()
            return
        stream = container.logs(stream=True, follow=True, tail=tail)
        with lock:
            streams.append(stream)
        if stop.is_set():
            stream.close()
            return
        yield from chunked_lines(stream)

    def close() -> None:
        with lock:
            for stream in streams:
                stream.close()

    return LogSource(str(container.name), read, close)


def _sort_key(container: Any) -> tuple[int, str]:
    service = container.labels.get(SERVICE_LABEL, "")
    rank = _ORDER.index(service) if service in _ORDER else len(_ORDER)
    number = container.labels.get("com.docker.compose.container-number", "0")
    return (rank, f"{service}-{int(number):04d}" if number.isdigit() else container.name)


def _state(container: Any) -> tuple[str, bool]:
    """(running | completed | dead | stopped, healthy) of a container, from what the SDK listed.

    Running counts as healthy when its healthcheck says so or it has none; the one-shot
    migration is healthy once it exited 0.
    """
    info = container.attrs.get("State", {})
    if container.status == "running":
        health = info.get("Health")
        status = health.get("Status") if isinstance(health, dict) else None
        return "running", status in (None, "healthy")
    service = container.labels.get(SERVICE_LABEL, "?")
    if service in ONE_SHOT and container.status == "exited" and info.get("ExitCode", 0) == 0:
        return "completed", True
    return ("dead" if container.status in ("exited", "dead") else "stopped"), False


def _uptime(state: dict[str, Any]) -> float | None:
    started = str(state.get("StartedAt", ""))
    if not started or started.startswith("0001-"):
        return None
    # Docker reports nanoseconds: keep microseconds for fromisoformat.
    head, _, rest = started.partition(".")
    fraction = "".join(ch for ch in rest if ch.isdigit())[:6]
    try:
        when = datetime.fromisoformat(f"{head}.{fraction or '0'}+00:00")
    except ValueError:
        return None
    return max(0.0, (datetime.now(UTC) - when).total_seconds())


def _decode(data: bytes | str) -> str:
    return data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
