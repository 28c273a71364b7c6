"""Which PostgreSQL nodes a local stack has, where each listens and where the app connects.

Node names are service names: the first primary is ``postgres`` and standbys are
``postgres-2``, ``postgres-3``, ... Roles change (switchover, failover) but names and ports never
do, so logs, status and the state file stay readable. The topology (which node is the primary,
which follow it, which need a rejoin, synchronous or not) is kept in
``.taskscale/replication.json``; its presence means replication is on.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from taskscale import binaries
from taskscale.config import Credentials, Project
from taskscale.errors import TaskscaleError, UsageError
from taskscale.targets.local.postgres import LocalPostgres, PostgresSettings, socket_dir_for

TOPOLOGY_FILE = "replication.json"
PRIMARY = "postgres"


@dataclass
class Topology:
    primary: str = PRIMARY
    standbys: list[str] = field(default_factory=list)
    sync: bool = False
    # Former primaries after a failover: stopped, waiting for `replicate rejoin`.
    detached: list[str] = field(default_factory=list)

    @property
    def nodes(self) -> list[str]:
        return [self.primary, *self.standbys, *self.detached]

    @staticmethod
    def exists(state_dir: Path) -> bool:
        return (state_dir / TOPOLOGY_FILE).exists()

    @classmethod
    def load(cls, state_dir: Path) -> Topology:
        path = state_dir / TOPOLOGY_FILE
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except ValueError as exc:
            raise TaskscaleError(f"{path} is corrupt: {exc}") from exc
        return cls(
            primary=str(data.get("primary", PRIMARY)),
            standbys=[str(s) for s in data.get("standbys", [])],
            sync=bool(data.get("sync", False)),
            detached=[str(s) for s in data.get("detached", [])],
        )

    def save(self, state_dir: Path) -> None:
        path = state_dir / TOPOLOGY_FILE
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{TOPOLOGY_FILE}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)


class Nodes:
    """The PostgreSQL nodes of one local stack: ports, data directories, connection URLs."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.config = project.config
        self.state_dir = project.state_dir

    @property
    def credentials(self) -> Credentials:
        """Read from .env when first needed (``status`` and ``down`` never need it)."""
        return self.project.credentials()

    def bins(self) -> binaries.PostgresBinaries:
        return binaries.postgres(self.config.postgres.binaries)

    def topology(self) -> Topology:
        return Topology.load(self.state_dir)

    def port(self, node: str) -> int:
        if node == PRIMARY:
            return self.config.ports.postgres
        try:
            number = int(node.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            raise UsageError(f"not a PostgreSQL node name: {node!r}") from None
        return self.config.ports.postgres_standby_base + number - 2

    def node(self, name: str) -> LocalPostgres:
        settings = PostgresSettings(
            port=self.port(name),
            max_connections=self.config.postgres.max_connections,
            socket_dir=socket_dir_for(self.state_dir),
        )
        # Each node's directory stands on its own (never nested in another node's), so removing
        # a node can never touch another's data.
        root = None if name == PRIMARY else self.state_dir / name
        return LocalPostgres(self.bins(), self.state_dir, settings, root=root)

    def primary_name(self) -> str:
        """The current primary (``postgres`` unless a switchover or failover moved it)."""
        return self.topology().primary if Topology.exists(self.state_dir) else PRIMARY

    def database_urls(self) -> tuple[str, list[str]]:
        """(DATABASE_URL of the primary, DATABASE_REPLICA_URLS of the streaming standbys)."""
        topology = self.topology()
        url = self.credentials.database_url
        return url(self.port(topology.primary)), [url(self.port(s)) for s in topology.standbys]
