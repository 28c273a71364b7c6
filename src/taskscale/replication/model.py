"""Typed results of `taskscale replicate` and its subcommands."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Role = Literal["primary", "standby"]


@dataclass(frozen=True)
class WalSender:
    """One row of the primary's pg_stat_replication (joined with its slot)."""

    application_name: str
    state: str
    sent_lsn: str | None
    write_lsn: str | None
    flush_lsn: str | None
    replay_lsn: str | None
    lag_bytes: int | None
    replay_lag_seconds: float | None
    sync_state: str
    slot: str | None


@dataclass(frozen=True)
class NodeInfo:
    in_recovery: bool
    timeline: int | None
    current_lsn: str | None  # primary: pg_current_wal_lsn; standby: last replayed
    receive_lsn: str | None
    replay_lsn: str | None
    replay_delay_seconds: float | None
    receiver_status: str | None
    synchronous_standby_names: str


@dataclass(frozen=True)
class NodeStatus:
    name: str
    role: Role
    # primary: "running"; standby: the WAL receiver / pg_stat_replication state ("streaming",
    # "catchup", "startup", ...); "down" when the node does not answer.
    state: str
    port: int
    host: str = "127.0.0.1"
    timeline: int | None = None
    sent_lsn: str | None = None
    write_lsn: str | None = None
    flush_lsn: str | None = None
    replay_lsn: str | None = None
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    sync_state: str | None = None
    slot: str | None = None


@dataclass(frozen=True)
class ClusterStatus:
    target: str
    primary: str | None
    sync: bool
    nodes: list[NodeStatus]
    notes: list[str] = field(default_factory=list)

    def node(self, name: str) -> NodeStatus | None:
        return next((n for n in self.nodes if n.name == name), None)

    @property
    def standbys(self) -> list[NodeStatus]:
        return [n for n in self.nodes if n.role == "standby"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ReplicationChange:
    """What a replicate / switchover / failover / rejoin did, and the cluster afterwards."""

    action: str
    changed: list[str]
    status: ClusterStatus
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "changed": self.changed,
            "seconds": round(self.seconds, 3),
            **self.status.to_dict(),
        }
