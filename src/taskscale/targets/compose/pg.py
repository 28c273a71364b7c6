"""PostgreSQL of the compose stack, read through ``psql`` inside the primary's container.

No database port is published on this target, so taskscale asks the primary itself (Docker exec,
local socket) and turns ``pg_stat_replication`` into the same ``ClusterStatus`` the local target
reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from taskscale.errors import TargetError
from taskscale.replication import plan, sql
from taskscale.replication.model import ClusterStatus, NodeInfo, WalSender

TIMELINE_SQL = "SELECT timeline_id FROM pg_control_checkpoint()"

# Slots of standbys that are gone (their container was removed): they would hold WAL forever.
DROP_STALE_SLOTS_SQL = """
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
WHERE NOT active AND slot_type = 'physical' AND slot_name LIKE 'standby\\_%'
"""


def set_sync(sync: bool) -> tuple[str, str]:
    """Commits wait for any one standby (``ANY 1 (*)``), or for none; applied with a reload."""
    if sync:
        change = "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (*)'"
    else:
        change = "ALTER SYSTEM RESET synchronous_standby_names"
    return change, "SELECT pg_reload_conf()"


@dataclass(frozen=True)
class Primary:
    """The primary's container and who psql connects as (over the local socket)."""

    container: Any
    user: str
    database: str

    @property
    def name(self) -> str:
        return str(self.container.name)

    def run(self, *statements: str) -> list[list[str]]:
        """Rows of ``statements`` (each its own ``-c``: ALTER SYSTEM refuses a transaction),
        tab-separated, unaligned."""
        argv = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-U", self.user, "-d", self.database]
        argv += ["-AtF", "\t"]
        for statement in statements:
            argv += ["-c", statement.strip()]
        try:
            # Bounded by the client's read timeout (engine.ENGINE_TIMEOUT_S).
            result = self.container.exec_run(argv, user="postgres", demux=True)
        except Exception as exc:  # the SDK raises several types for one cause
            raise TargetError(f"cannot run psql in {self.name}: {exc}") from exc
        stdout, stderr = result.output if isinstance(result.output, tuple) else (result.output, b"")
        if result.exit_code != 0:
            message = (stderr or stdout or b"").decode(errors="replace").strip().splitlines()
            raise TargetError(f"psql in {self.name} failed: {message[-1] if message else '?'}")
        text = (stdout or b"").decode(errors="replace")
        return [line.split("\t") for line in text.splitlines() if line]


def senders(primary: Primary) -> list[WalSender]:
    """The primary's WAL senders (psql prints NULL as an empty field)."""
    rows = primary.run(sql.WAL_SENDERS_SQL)
    return [sql.wal_sender([v if v != "" else None for v in row]) for row in rows]


def cluster_status(
    target: str, primary: Primary, standbys: list[Any], *, sync: bool
) -> ClusterStatus:
    rows = primary.run(TIMELINE_SQL)
    # Standbys are not reachable from here: their rows come from the primary's view alone.
    info = NodeInfo(
        in_recovery=False,
        timeline=int(rows[0][0]) if rows else None,
        current_lsn=None,
        receive_lsn=None,
        replay_lsn=None,
        replay_delay_seconds=None,
        receiver_status=None,
        synchronous_standby_names="",
    )
    by_name = {s.application_name: s for s in senders(primary)}
    nodes = [plan.primary_status(primary.name, info, port=5432, host="postgres")]
    for container in standbys:
        # Each standby reports its container hostname as application_name (cluster_name).
        hostname = str(container.attrs.get("Config", {}).get("Hostname", ""))
        sender = by_name.pop(hostname, None)
        nodes.append(
            plan.standby_status(
                container.name, None, sender, info, port=5432, host="postgres-standby"
            )
        )
    notes = [f"unknown WAL receiver {name!r} streams from the primary" for name in by_name]
    return ClusterStatus(target=target, primary=primary.name, sync=sync, nodes=nodes, notes=notes)
