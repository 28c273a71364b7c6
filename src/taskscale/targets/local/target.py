"""The local target: PostgreSQL, Redis, N uvicorn replicas, the worker and nginx as processes.

``up`` converges the running stack to the requested shape and changes only what differs: dead
services are restarted, healthy ones kept, replicas added (started, ready, then put behind nginx)
or removed (taken out of nginx, then stopped gracefully). The pieces, bottom up: ``supervisor``
(processes and their record), ``topology`` (PostgreSQL nodes), ``redis``, ``router`` (nginx),
``fleet`` (replicas, worker, rollouts), ``replication`` and ``health``; this class composes them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from taskscale import binaries, proc
from taskscale.config import Project
from taskscale.errors import ServiceNotReady, TargetError, UsageError
from taskscale.targets import ports
from taskscale.targets.base import Target, validate_replicas
from taskscale.targets.local import (
    appenv,
    daemon,
    kafka,
    migrations,
    postgres,
    preload,
    probes,
    redis,
)
from taskscale.targets.local.fleet import Fleet
from taskscale.targets.local.health import Health, service_order
from taskscale.targets.local.policy import RestartPolicy
from taskscale.targets.local.router import NAME as ROUTER_NAME
from taskscale.targets.local.router import NginxRouter, Router
from taskscale.targets.local.supervisor import ProcessRunner, ProcessSpec, Run, Supervisor
from taskscale.targets.local.topology import PRIMARY, Nodes, Topology
from taskscale.targets.logstream import LogStream, file_source
from taskscale.targets.model import (
    DownResult,
    Endpoints,
    StackStatus,
    StepCallback,
    no_steps,
)

if TYPE_CHECKING:
    from taskscale.targets.local.faults import LocalFaults
    from taskscale.targets.local.replication import LocalReplication
    from taskscale.targets.local.telemetry import LocalTelemetry

READY_POLL = 0.05
PORT_FREE_TIMEOUT = 5.0


class LocalTarget(Target):
    name = "local"
    guide = "docs/local-target.md"

    def __init__(
        self,
        project: Project,
        *,
        runner: ProcessRunner | None = None,
        router: Router | None = None,
    ) -> None:
        """``runner`` and ``router`` replace the operating system and nginx (tests)."""
        self.project = project
        self.config = project.config
        self.state_dir = project.state_dir
        self.supervisor = Supervisor(
            self.state_dir, ready_timeout=self.config.stack.ready_timeout, runner=runner
        )
        self.nodes = Nodes(project)
        self.router = router or NginxRouter(self.config, self.state_dir, self.supervisor)
        self.fleet = Fleet(project, self.supervisor, self.router, self.app_env)
        self.health = Health(project, self.supervisor)

    # ------------------------------------------------------------------ the interface

    def endpoints(self) -> Endpoints:
        return Endpoints(api=f"http://127.0.0.1:{self.config.ports.api}")

    def up(self, replicas: int, on_step: StepCallback = no_steps) -> StackStatus:
        validate_replicas(replicas, self.config.stack.max_replicas)
        with self.supervisor.session() as run:
            self._converge(run, replicas, on_step)
        return self.status()

    def status(self) -> StackStatus:
        state = self.supervisor.load()
        services = self.health.statuses(state)
        return StackStatus(
            target=self.name,
            project=self.config.project.name,
            replicas=len(self.fleet.replicas(state, self.fleet.slot(state))),
            services=services,
            endpoints=self.endpoints(),
            notes=self.health.notes(state, services, self.router.routed(state)),
        )

    def logs(self, service: str | None, tail: int, follow: bool) -> LogStream:
        state = self.supervisor.load()
        if not state.services:
            raise TargetError(
                "the stack is not running",
                hint="start it with `taskscale up`; the logs of earlier runs are in "
                f"{self.supervisor.logs_dir}",
            )
        # One log per stable name (both slots of app-1 write app-1.log), then the other logs
        # of the directory (nginx-access, migrate...).
        sources: dict[str, str] = {}
        for record in sorted(state.services.values(), key=service_order):
            sources.setdefault(record.name, record.log)
        if self.supervisor.logs_dir.is_dir():
            for path in sorted(self.supervisor.logs_dir.glob("*.log")):
                sources.setdefault(path.stem, str(path))
        if service is not None and service not in sources:
            raise UsageError(f"unknown service {service!r}: choose one of {', '.join(sources)}")
        chosen = {service: sources[service]} if service is not None else sources
        return LogStream(
            [file_source(name, Path(log), tail, follow) for name, log in chosen.items()],
            follow=follow,
            prefix=service is None,
        )

    def down(self, purge: bool = False, on_step: StepCallback = no_steps) -> DownResult:
        with self.supervisor.session() as run:
            records = list(run.state.services.values())
            recorded_ports = sorted({r.port for r in records if r.port})
            stopped = self.supervisor.stop_in_order(run, records, on_step)
            leftover = [p for p in recorded_ports if not _freed(p)]
            if purge:
                on_step("deleting .taskscale data")
                self._purge()
        if leftover:
            holders = ", ".join(f"{p} ({ports.port_holder(p) or 'unknown'})" for p in leftover)
            raise TargetError(f"stopped the stack but ports are still in use: {holders}")
        return DownResult(target=self.name, stopped=stopped, purged=purge)

    def replication(self) -> LocalReplication:
        # Imported here: it needs psycopg (~0.1 s), which `up` must not pay before the
        # replica launcher starts, and `down`/`status` never need.
        from taskscale.targets.local.replication import LocalReplication

        return LocalReplication(self.supervisor, self.nodes, self._rollout)

    def faults(self) -> LocalFaults:
        from taskscale.targets.local.faults import LocalFaults

        def restart(on_step: StepCallback) -> None:
            self.up(max(self.status().replicas, 1), on_step)

        return LocalFaults(self.project, self.supervisor, self.nodes, restart)

    def telemetry(self) -> LocalTelemetry:
        from taskscale.targets.local.telemetry import LocalTelemetry

        return LocalTelemetry(self.project, self.supervisor, self.nodes)

    # ------------------------------------------------------------------ up, step by step

    def _converge(self, run: Run, replicas: int, on_step: StepCallback) -> None:
        cfg = self.config
        # Dead (crashed, killed, or the machine rebooted): forget them, start them again.
        self.supervisor.forget_dead(run)

        self.nodes.bins()  # every binary is checked before anything starts
        redis_bin = binaries.redis_server()
        binaries.nginx()
        kafka_bin = binaries.tansu() if self.uses_kafka else None
        if os.geteuid() == 0:
            binaries.unshare()

        slot = self.fleet.slot(run.state)
        needed = {cfg.ports.postgres: "postgres", cfg.ports.redis: "redis", cfg.ports.api: "nginx"}
        if kafka_bin is not None:
            needed[cfg.ports.kafka] = "kafka"
        needed.update(self.fleet.ports(replicas, slot))
        ours = [r.port for r in run.state.services.values() if r.port is not None]
        ports.check_ports_free(needed, ours)

        credentials = self.project.credentials()
        python = appenv.resolve_python(self.project, on_step)

        with contextlib.ExitStack() as unused:
            # Two or more replicas to start: the launcher they fork from begins importing the
            # app's libraries now (~1 s of CPU), in parallel with PostgreSQL, Redis and the
            # migration check; it forks them once the database is ready. Killed if unused.
            launcher = None
            if len(self.fleet.missing(run.state, replicas, slot)) > 1:
                launcher = unused.enter_context(
                    preload.start_launcher(python, self.project.root, self._launcher_timeout())
                )
            primary = self._ensure_primary(run, on_step)
            if Topology.exists(self.state_dir):
                self.replication().start_nodes(run, on_step)
            redis.ensure(
                self.supervisor, run, redis_bin, port=cfg.ports.redis,
                password=credentials.required("redis_password"),
                data_dir=self.state_dir / "redis", on_step=on_step,
            )  # fmt: skip
            if kafka_bin is not None:
                kafka.ensure(self.supervisor, run, kafka_bin, port=cfg.ports.kafka, on_step=on_step)
            self._migrate(python, primary, credentials.postgres_db, on_step)
            self.fleet.scale(run, python, replicas, on_step, launcher)
        self.fleet.ensure_worker(run, python, on_step)
        self.fleet.route(run, replicas, slot, on_step)
        on_step("waiting for /readyz through nginx")
        proc.wait_until(
            lambda: probes.status(cfg.ports.api, "/readyz", 2.0) == 200,
            timeout=cfg.stack.ready_timeout,
            what=f"the API through nginx ({self.endpoints().api}/readyz)",
            log_path=self.supervisor.log_path(ROUTER_NAME),
            max_interval=READY_POLL,
        )
        worker = run.state.named("worker")
        if worker is not None and not self.supervisor.alive(worker):
            raise ServiceNotReady(
                "worker exited while starting", detail=proc.file_tail(worker.log_path)
            )
        # Last: the process that restarts whatever crashes from now on (docs/architecture.md).
        policy = RestartPolicy.from_config(cfg.restart)
        spec = ProcessSpec(
            daemon.NAME,
            "supervisor",
            daemon.argv(self.state_dir, python, self.project.root, policy, cfg.stack.ready_timeout),
        )
        if daemon.ensure(self.supervisor, run, spec, policy.enabled):
            on_step("started the supervisor (restarts crashed services)")

    @property
    def uses_kafka(self) -> bool:
        return self.config.project.broker == "kafka"

    def _ensure_primary(self, run: Run, on_step: StepCallback) -> postgres.LocalPostgres:
        """Start the primary if it is not running and make sure the roles exist; return it."""
        # After a switchover or failover the primary is another node of the topology.
        name = self.nodes.primary_name()
        pg = self.nodes.node(name)
        if run.state.named(name) is None:
            if not pg.initialized:
                if name != PRIMARY:
                    raise TargetError(
                        f"the primary {name} has no data directory ({pg.data_dir})",
                        hint="restore it, or delete .taskscale/replication.json to start over",
                    )
                on_step("initialising PostgreSQL (first run)")
                pg.initdb(
                    self.supervisor.log_path(PRIMARY), timeout=self.config.stack.ready_timeout * 2
                )
            pg.write_settings()
            on_step(f"starting PostgreSQL ({name})")
            spec = ProcessSpec(name, "postgres", pg.argv(), pg.settings.port)
            record = self.supervisor.spawn(run, spec)
            self.supervisor.wait_ready(record, pg.ready)
        on_step("checking PostgreSQL roles")
        credentials = self.project.credentials()
        pg.ensure_roles(
            user=credentials.postgres_user,
            password=credentials.required("postgres_password"),
            database=credentials.postgres_db,
            replication_user=credentials.replication_user,
            replication_password=credentials.replication_password or None,
        )
        return pg

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
        env = self.app_env(f"{self.config.project.name}-migrations")
        log = self.supervisor.log_path("migrate")  # `logs migrate`, as on compose and Kubernetes
        log.parent.mkdir(parents=True, exist_ok=True)
        result = proc.run(
            appenv.migrations_argv(python),
            cwd=self.project.root,
            env=env,
            timeout=self._migrations_timeout(),
        )
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(result.stdout + result.stderr)

    def app_env(self, instance_id: str) -> dict[str, str]:
        """The app's environment for one process: the primary for writes and, with
        replication on, the streaming standbys for reads."""
        primary, standbys = self.nodes.database_urls()
        replicas = standbys if Topology.exists(self.state_dir) else None
        return appenv.app_env(
            self.project, instance_id=instance_id, database_url=primary, replica_urls=replicas
        )

    def _rollout(self, run: Run, on_step: StepCallback) -> None:
        """Re-point the app (replicas and worker) at the current topology."""
        self.fleet.rollout(run, appenv.resolve_python(self.project, on_step), on_step)

    # ------------------------------------------------------------------ down --purge

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


def _freed(port: int) -> bool:
    """True once ``port`` is free again (bounded wait: a stopped server's socket lingers)."""
    return proc.poll_until(lambda: ports.port_free(port), PORT_FREE_TIMEOUT)
