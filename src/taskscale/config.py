"""Typed configuration: ``taskscale.toml`` of a generated project, loaded once at the edge.

Every model forbids unknown keys so a typo in the file is an error, not a silent default.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from taskscale.errors import ConfigError, ProjectNotFound, TaskscaleError, UsageError

CONFIG_FILE = "taskscale.toml"
# Ports reserved for standbys: more than replication.plan.MAX_STANDBYS, because a node's port
# follows its number (postgres-N) and detached former primaries keep their numbers.
STANDBY_PORTS = 8
STATE_DIR = ".taskscale"

Broker = Literal["redis", "kafka"]
# jwt: bearer tokens and per-user tasks; none: the tutorial's open API.
Auth = Literal["jwt", "none"]

# A DNS-1123 label that also maps cleanly onto a Python package name (dashes -> underscores):
# lower-case letters, digits and single dashes, starting with a letter, at most 63 characters.
_NAME_RE = re.compile(r"^[a-z](?:[a-z0-9]|-(?=[a-z0-9])){0,62}$")


def check_project_name(name: str) -> str:
    """Return ``name`` if it is a valid project name, else raise a one-line reason."""
    if not _NAME_RE.fullmatch(name):
        raise UsageError(
            f"invalid project name {name!r}: use 1-63 lower-case letters, digits and single "
            "dashes, starting with a letter and not ending with a dash (e.g. tasks-api)"
        )
    return name


def package_name(name: str) -> str:
    return name.replace("-", "_")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectSection(_Model):
    name: str
    package: str
    broker: Broker = "redis"
    # `taskscale new` always writes it; a file without it predates the answer (an open API).
    auth: Auth = "none"
    taskscale_version: str


class PortsSection(_Model):
    api: int = Field(8080, ge=1, le=65535, description="nginx: the public API port")
    app_base: int = Field(8100, ge=1, le=65535, description="replica i listens on app_base + i")
    # Below 32768: Linux hands out 32768-60999 as ephemeral ports for outgoing connections,
    # which could briefly hold a default port.
    postgres: int = Field(25432, ge=1, le=65535)
    postgres_standby_base: int = Field(25440, ge=1, le=65535)
    redis: int = Field(26379, ge=1, le=65535)
    # The Kafka-protocol broker (Tansu) of a `--broker kafka` project on the local target.
    kafka: int = Field(29092, ge=1, le=65535)
    metrics: int = Field(9090, ge=1, le=65535)


class ImagesSection(_Model):
    app: str
    worker: str


class StackSection(_Model):
    replicas: int = Field(3, ge=1)
    max_replicas: int = Field(16, ge=1, le=64)
    ready_timeout: float = Field(30.0, gt=0)
    # Interpreter for the app; empty means: reuse taskscale's own when it satisfies the app's
    # requirements, else create .taskscale/venv.
    python: str = ""

    @model_validator(mode="after")
    def _replicas_within_max(self) -> StackSection:
        if self.replicas > self.max_replicas:
            raise ValueError(
                f"replicas ({self.replicas}) exceeds max_replicas ({self.max_replicas})"
            )
        return self


class RestartSection(_Model):
    """The local target's restart policy (docs/local-target.md, "Restarts")."""

    # always: a service that exits on its own (crash, kill, OOM, even exit 0) is started again
    # by the stack's supervisor process; never: it stays dead until `taskscale up`.
    policy: Literal["always", "never"] = "always"
    # More restarts of one service than this within window_seconds is a crash loop: the
    # supervisor stops trying and `status` shows it with the end of its log.
    max_restarts: int = Field(5, ge=1, le=100)
    window_seconds: float = Field(60.0, gt=0)
    # The first restart is immediate; each further one within the window waits twice as long
    # as the one before (0.5 s, 1 s, 2 s ...), at most this long.
    backoff_max_seconds: float = Field(10.0, ge=0)


class PostgresSection(_Model):
    binaries: Literal["auto", "wheel", "system"] = "auto"
    database: str = "tasks"
    user: str = "tasks"
    pool_size: int = Field(10, ge=1, le=200)
    max_connections: int = Field(200, ge=10)


class CacheSection(_Model):
    ttl_seconds: int = Field(60, ge=1)


class LoadtestSection(_Model):
    users: int = Field(50, ge=1)
    spawn_rate: float = Field(25.0, gt=0)
    duration: str = "30s"
    scenario: str = "mixed"


class KubernetesSection(_Model):
    """The minikube / kubernetes targets (``deploy/k8s``); the manifests are rendered from these."""

    # Every object lives in this namespace; `taskscale down` deletes it.
    namespace: str = Field("taskscale", pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
    # kubeconfig context; empty: the current context (minikube: "minikube").
    context: str = ""
    hpa_max_replicas: int = Field(10, ge=1, le=1000)
    cpu_target_percent: int = Field(70, ge=1, le=100)
    scale_down_window_seconds: int = Field(300, ge=0, le=3600)
    rollout_timeout: float = Field(300.0, gt=0)


class ProjectConfig(_Model):
    project: ProjectSection
    ports: PortsSection = PortsSection()
    images: ImagesSection
    stack: StackSection = StackSection()
    restart: RestartSection = RestartSection()
    postgres: PostgresSection = PostgresSection()
    cache: CacheSection = CacheSection()
    loadtest: LoadtestSection = LoadtestSection()
    kubernetes: KubernetesSection = KubernetesSection()

    @model_validator(mode="after")
    def _ports_do_not_overlap(self) -> ProjectConfig:
        # Replicas use app_base .. app_base + 2 * max_replicas - 1 (two sets: blue/green
        # rollouts); standbys use postgres_standby_base .. + STANDBY_PORTS - 1.
        ports = self.ports
        app = range(ports.app_base, ports.app_base + 2 * self.stack.max_replicas)
        standbys = range(ports.postgres_standby_base, ports.postgres_standby_base + STANDBY_PORTS)
        if app.stop - 1 > 65535 or standbys.stop - 1 > 65535:
            raise ValueError("ports: app or standby port range goes past 65535")
        singles = {
            "api": ports.api,
            "postgres": ports.postgres,
            "redis": ports.redis,
            "kafka": ports.kafka,
        }
        for name, port in singles.items():
            if port in app:
                raise ValueError(
                    f"ports.{name} ({port}) falls in the replicas' range "
                    f"{app.start}-{app.stop - 1} (app_base + 2 x max_replicas)"
                )
            if port in standbys:
                raise ValueError(f"ports.{name} ({port}) falls in the standbys' range")
        if set(app) & set(standbys):
            raise ValueError("ports: the replicas' and the standbys' ranges overlap")
        return self


class Project:
    """A generated project on disk: its root, its parsed config and its state directory."""

    def __init__(self, root: Path, config: ProjectConfig) -> None:
        self.root = root
        self.config = config
        self._secrets: dict[str, str] | None = None

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def env_file(self) -> Path:
        return self.root / ".env"

    def secrets(self) -> dict[str, str]:
        """The generated ``.env`` as a dict (never printed by taskscale); read once per Project,
        which lives for one command."""
        if self._secrets is None:
            self._secrets = read_env_file(self.env_file)
        return dict(self._secrets)

    def credentials(self) -> Credentials:
        """The typed credentials of ``.env`` (see ``Credentials``)."""
        return Credentials.from_env(self.secrets(), self.config)


def find_project_root(start: Path) -> Path:
    """The nearest directory at or above ``start`` holding taskscale.toml."""
    start = start.resolve()
    for candidate in (start, *start.parents):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise ProjectNotFound(
        f"not inside a taskscale project: no {CONFIG_FILE} in {start} or any parent",
        hint="run `taskscale new NAME` first, or pass --project DIR",
    )


def load_project(start: Path | None = None) -> Project:
    root = find_project_root(start or Path.cwd())
    return Project(root, load_config(root / CONFIG_FILE))


def load_config(path: Path) -> ProjectConfig:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    try:
        return ProjectConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{path}: {where}: {first['msg']}{more}") from exc


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a simple KEY=VALUE .env file (comments and blank lines ignored)."""
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path} is missing: it holds the project's generated secrets",
            hint="restore it from a backup, or copy .env.example and fill in new secrets",
        ) from exc
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().strip('"').strip("'")
    return values


# .env keys of the generated secrets (taskscale new writes them).
_CREDENTIAL_KEYS = {
    "postgres_user": "POSTGRES_USER",
    "postgres_password": "POSTGRES_PASSWORD",
    "postgres_db": "POSTGRES_DB",
    "replication_user": "REPLICATION_USER",
    "replication_password": "REPLICATION_PASSWORD",
    "redis_password": "REDIS_PASSWORD",
    "secret_key": "SECRET_KEY",
}


@dataclass(frozen=True)
class Credentials:
    """The project's database and cache credentials, read once from ``.env``.

    Names default to taskscale.toml's ``[postgres]`` settings (and ``replicator``); a missing
    secret is "" and ``required`` turns it into one clear error where it is needed."""

    postgres_user: str
    postgres_password: str
    postgres_db: str
    replication_user: str
    replication_password: str
    redis_password: str
    secret_key: str

    @classmethod
    def from_env(cls, env: Mapping[str, str], config: ProjectConfig) -> Credentials:
        defaults = {
            "postgres_user": config.postgres.user,
            "postgres_db": config.postgres.database,
            "replication_user": "replicator",
        }
        return cls(
            **{
                attr: env.get(key) or defaults.get(attr, "")
                for attr, key in _CREDENTIAL_KEYS.items()
            }
        )

    def required(self, attr: str) -> str:
        """The value of ``attr`` (e.g. ``redis_password``), or an error naming its .env key."""
        value = str(getattr(self, attr))
        if not value:
            raise TaskscaleError(
                f".env has no {_CREDENTIAL_KEYS[attr]}",
                hint="restore the project's .env (taskscale new writes it)",
            )
        return value

    def database_url(self, port: int, *, host: str = "127.0.0.1") -> str:
        """The app's SQLAlchemy URL for the database on ``host:port``."""
        return (
            f"postgresql+psycopg://{self.postgres_user}:{self.postgres_password}"
            f"@{host}:{port}/{self.postgres_db}"
        )
