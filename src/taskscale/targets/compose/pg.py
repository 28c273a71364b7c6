"""PostgreSQL of the compose stack, read through ``psql`` inside the primary's container.

No database port is published on this target, so taskscale asks the primary itself (Docker exec,
local socket) and turns ``pg_stat_replication`` into the same ``ClusterStatus`` the local target
reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from taskscale.errors import TargetError
from taskscale.replication.model import ClusterStatus, NodeStatus

SENDERS_SQL = """
SELECT r.application_name, r.state, r.sent_lsn, r.write_lsn, r.flush_lsn, r.replay_lsn,
       COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)::bigint, 0),
       COALESCE(EXTRACT(EPOCH FROM r.replay_lag), 0), r.sync_state,
       COALESCE((SELECT s.slot_name FROM pg_replication_slots s WHERE s.active_pid = r.pid), '')
FROM pg_stat_replication r ORDER BY r.application_name
"""

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


def cluster_status(
    target: str, primary: Primary, standbys: list[Any], *, sync: bool
) -> ClusterStatus:
    timeline_rows = primary.run(TIMELINE_SQL)
    timeline = int(timeline_rows[0][0]) if timeline_rows else None
    senders = {row[0]: row for row in primary.run(SENDERS_SQL)}
    primary_name = primary.name
    nodes = [
        NodeStatus(
            name=primary_name,
            role="primary",
            state="running",
            port=5432,
            host="postgres",
            timeline=timeline,
        )
    ]
    notes: list[str] = []
    for container in standbys:
        # Each standby reports its container hostname as application_name (cluster_name).
        hostname = str(container.attrs.get("Config", {}).get("Hostname", ""))
        row = senders.pop(hostname, None)
        if row is None:
            nodes.append(
                NodeStatus(
                    name=container.name,
                    role="standby",
                    state="down",
                    port=5432,
                    host="postgres-standby",
                )
            )
            continue
        nodes.append(
            NodeStatus(
                name=container.name,
                role="standby",
                state=row[1],
                port=5432,
                host="postgres-standby",
                timeline=timeline,
                sent_lsn=row[2] or None,
                write_lsn=row[3] or None,
                flush_lsn=row[4] or None,
                replay_lsn=row[5] or None,
                lag_bytes=int(row[6]),
                # pg_stat_replication keeps the last lag while idle: nothing waits to replay.
                lag_seconds=0.0 if int(row[6]) == 0 else float(row[7]),
                sync_state=row[8] or None,
                slot=row[9] or None,
            )
        )
    notes += [f"unknown WAL receiver {name!r} streams from the primary" for name in senders]
    return ClusterStatus(target=target, primary=primary_name, sync=sync, nodes=nodes, notes=notes)
